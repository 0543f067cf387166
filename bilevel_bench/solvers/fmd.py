"""Forward-mode differentiation: carry Z = dv/du through the same T unrolled SGD steps as RMD.

    Z_{t+1} = d step(u, v_t) / d(u, v) . (I, Z_t),   hypergradient = grad_u f + Z_T^T grad_v f

All U upper directions of every run are pushed through each step at once with torch.func.vmap
over jvp. Z holds K x U x V numbers, the directions U x U, and every intermediate of g carries
a tangent per direction, so the solver estimates that memory first and refuses above
solver.max_jacobian_mb.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vmap

from bilevel_bench import autodiff, checks, hypergrad
from bilevel_bench.solvers.base import Param, Solver, require_sgd_lower

# Z, the tangent outputs of one step, and vmap's batched intermediates of the same size.
JACOBIAN_COPIES = 3


def graph_bytes(problem, u, v, stream) -> int:
    """Bytes of the intermediates autograd keeps for one evaluation of g over all runs (each
    storage once; inputs and the variables themselves left out). FMD pushes a tangent through
    every one of them for each upper direction it carries at once."""
    upper_batch, lower_batch = problem.sample_batches(stream)
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.requires_grad and tensor.grad_fn is not None:  # depends on u or v
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        u_live, v_live = autodiff.leaves(u), autodiff.leaves(v)
        problem.bind(u_live, upper_batch, lower_batch).g(v_live)
    return sum(storages.values())


class FMD(Solver):
    name = "fmd"
    params = {
        **Solver.params,
        "optimizer_v": Param(
            "sgd", Solver.params["optimizer_v"].check, "sgd: the unrolled map is plain descent"
        ),
        "max_jacobian_mb": Param(1024, checks.positive, "refuse when dv/du would need more"),
        "chunk_size": Param(
            0, checks.non_negative_int, "vmap chunk over upper directions (0 = all)"
        ),
    }

    @classmethod
    def validate(cls, cfg):
        require_sgd_lower(cfg, cls.name)
        super().validate(cfg)

    def init(self, u, v, stream):
        self.upper_size = autodiff.numel_per_run(u)
        self.check_memory(u, v, stream)
        return super().init(u, v, stream)

    def memory_mb(self, u, v, stream) -> dict[str, float]:
        """The large buffers of a step, in MB: Z = dv/du with its copies (K x U x V), the U x U
        unit directions pushed through every step, and a tangent per direction of every
        intermediate of g (tests/test_fmd_memory.py compares the total with a measured peak)."""
        runs = len(next(iter(v.values())))
        upper, lower = self.upper_size, autodiff.numel_per_run(v)
        element = next(iter(v.values())).element_size()
        directions = int(self.cfg.chunk_size) or upper  # how many vmap pushes at once
        return {
            "jacobian": JACOBIAN_COPIES * runs * upper * lower * element / 2**20,
            "directions": upper * upper * element / 2**20,
            "tangents": directions * graph_bytes(self.problem, u, v, stream) / 2**20,
        }

    def check_memory(self, u, v, stream) -> None:
        """Refuse before any step when a step's large buffers would exceed the budget."""
        mb = self.memory_mb(u, v, stream)
        total = sum(mb.values())
        if total > float(self.cfg.max_jacobian_mb):
            runs = len(next(iter(v.values())))
            upper, lower = self.upper_size, autodiff.numel_per_run(v)
            raise checks.ConfigError(
                f"fmd needs about {total:,.0f} MB for dv/du ({runs} run(s) x {upper:,} upper x "
                f"{lower:,} lower variables: {mb['jacobian']:,.0f} MB with its copies, "
                f"{mb['directions']:,.0f} MB of unit directions, {mb['tangents']:,.0f} MB of "
                f"tangents of g's intermediates), above solver.max_jacobian_mb="
                f"{self.cfg.max_jacobian_mb}. Raise solver.max_jacobian_mb if the device has the "
                f"memory, or use solver=rmd / penalty / approxgrad"
            )

    def update(self, state, upper_batch, lower_batch):
        problem = self.problem
        lr = state["opt_v"]["lr"].to(next(iter(state["v"].values())).dtype)
        u, v = state["u"], state["v"]

        def step_map(u_, v_):
            objective = problem.bind(u_, upper_batch, lower_batch).g
            return hypergrad.sgd_lower_step(
                objective, v_, lr, problem.project_v, hypergrad.functional_gradient
            )

        def push(du, zv):
            return jvp(step_map, (u, v), (du, zv))

        directions = self._unit_directions(u)  # [U, K, ...]: coordinate i of u in every run
        z = {k: t.new_zeros((self.upper_size, *t.shape)) for k, t in v.items()}
        chunk = int(self.cfg.chunk_size) or None
        for _ in range(self.T):
            v_next, z = vmap(push, chunk_size=chunk)(directions, z)
            v = {k: t[0] for k, t in v_next.items()}  # identical along the vmapped axis

        u_live, v_live = autodiff.leaves(u), autodiff.leaves(v)
        f = problem.bind(u_live, upper_batch, lower_batch).f(v_live)
        grad_u_f, grad_v_f = autodiff.grad_pair(f, u_live, v_live)
        # Z^T grad_v f: per run, one number per upper coordinate -> [K, U]
        flat = sum((z[k].flatten(2) * grad_v_f[k].flatten(1)).sum(-1) for k in grad_v_f)
        implicit = self._unflatten_u(flat.T, u)
        state = self.step_u({**state, "v": v}, autodiff.add(grad_u_f, implicit))
        return state, {"upper_loss": f.detach()}

    def _unit_directions(self, u):
        first = next(iter(u.values()))
        runs = len(first)
        eye = torch.eye(self.upper_size, dtype=first.dtype, device=first.device)
        batched = eye[:, None, :].expand(self.upper_size, runs, self.upper_size)
        return self._unflatten_u(batched, u)

    def _unflatten_u(self, flat, u):
        """[..., K, U] -> dict of [..., K, *shape] per upper variable."""
        out, offset = {}, 0
        for k, t in u.items():
            n = t[0].numel()
            out[k] = flat[..., offset : offset + n].reshape(*flat.shape[:-1], *t.shape[1:])
            offset += n
        return out
