"""Forward-mode differentiation: carry Z = dv/du through the same T unrolled SGD steps as RMD.

    Z_{t+1} = d step(u, v_t) / d(u, v) . (I, Z_t),   hypergradient = grad_u f + Z_T^T grad_v f

All U upper directions are pushed through each step at once with torch.func.vmap over
jvp. Z holds U x V numbers, so the solver estimates that memory first and refuses above
solver.max_jacobian_mb.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vmap

from bilevel_bench import autodiff, checks
from bilevel_bench.solvers.base import Solver, require_sgd_lower

# Z, the tangent outputs of one step, and vmap's batched intermediates of the same size.
JACOBIAN_COPIES = 3


class FMD(Solver):
    name = "fmd"
    params = {
        **Solver.params,
        "max_jacobian_mb": checks.positive,
        "chunk_size": checks.non_negative_int,
    }

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        require_sgd_lower(cfg, cls.name)

    def __init__(self, problem, u, v, cfg, generator):
        super().__init__(problem, u, v, cfg, generator)
        self.upper_size, self.lower_size = autodiff.numel(u), autodiff.numel(v)
        element = next(iter(v.values())).element_size()
        estimate = JACOBIAN_COPIES * self.upper_size * self.lower_size * element / 2**20
        if estimate > float(cfg.max_jacobian_mb):
            raise checks.ConfigError(
                f"fmd needs about {estimate:,.0f} MB for dv/du ({self.upper_size:,} upper x "
                f"{self.lower_size:,} lower variables), above solver.max_jacobian_mb="
                f"{cfg.max_jacobian_mb}. Raise solver.max_jacobian_mb if the device has the "
                f"memory, or use solver=rmd / penalty / approxgrad"
            )
        self.chunk_size = int(cfg.chunk_size) or None

    def _step_map(self, upper_batch, lower_batch):
        problem, lr = self.problem, self.lr_v

        def step_map(u, v):
            g_of_v = lambda v_: problem.bind(u, upper_batch, lower_batch).g(v_)  # noqa: E731
            gv = torch.func.grad(g_of_v)(v)
            return problem.project_v({k: v[k] - lr * gv[k] for k in v})

        return step_map

    def step(self):
        upper_batch, lower_batch = self.problem.sample_batches(self.generator)
        step_map = self._step_map(upper_batch, lower_batch)
        u = autodiff.detached(self.u)
        v = autodiff.detached(self.v)
        directions = self._unit_directions(u)  # one basis vector of u per row
        z = {k: t.new_zeros((self.upper_size, *t.shape)) for k, t in v.items()}

        def push(du, zv):
            return jvp(lambda uu, vv: step_map(uu, vv), (u, v), (du, zv))

        for _ in range(self.T):
            v_next, z = vmap(push, chunk_size=self.chunk_size)(directions, z)
            v = {k: t[0] for k, t in v_next.items()}  # identical along the vmapped axis

        v = {k: t.requires_grad_() for k, t in v.items()}
        live_u = self.bind_live_u(upper_batch, lower_batch)
        f = live_u.f(v)
        grad_u_f = autodiff.grad(f, self.u, retain_graph=True)
        grad_v_f = autodiff.grad(f, v)
        # Z^T grad_v f, one number per upper coordinate
        flat = sum(z[k].reshape(self.upper_size, -1) @ grad_v_f[k].reshape(-1) for k in grad_v_f)
        implicit = self._unflatten_u(flat)
        with torch.no_grad():
            for k, t in self.v.items():
                t.copy_(v[k])
        self.apply_u(autodiff.add(grad_u_f, implicit))
        return {"upper_loss": f.detach()}

    def _unit_directions(self, u):
        eye = torch.eye(
            self.upper_size,
            dtype=next(iter(u.values())).dtype,
            device=next(iter(u.values())).device,
        )
        return self._unflatten_u(eye, batched=True)

    def _unflatten_u(self, flat, batched=False):
        out, offset = {}, 0
        for k, t in self.u.items():
            n = t.numel()
            piece = flat[..., offset : offset + n]
            out[k] = (
                piece.reshape(*flat.shape[:-1], *t.shape) if batched else piece.reshape(t.shape)
            )
            offset += n
        return out
