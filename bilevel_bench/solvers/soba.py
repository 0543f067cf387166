"""SOBA (Dagreou, Ablin, Vaiter, Moreau; NeurIPS 2022): single-loop implicit differentiation.

v, z and u move together, each along a direction evaluated at the old iterates:
    D_v = grad_v g,   D_z = H z + grad_v f,   D_u = grad_u f + J z
    v <- v - rho_t D_v,   z <- z - rho_t D_z,   u <- u - gamma_t D_u
with H = d2g/dv2 and J = d2g/dudv, so z tracks -H^-1 grad_v f (starting at 0) and D_u the
hypergradient. H z and J z come from one backward pass of <grad_v g, z> over (u, v).
rho_t = lr_v / (t+1)^power and gamma_t = lr_u / (t+1)^power are schedules in the state
(benchopt: power 1/2, lr_u = lr_v / outer_ratio). T > 1 repeats the (v, z) update T times per
upper step, the last one together with u's; T = 1 (the default) is SOBA.
"""

from __future__ import annotations

from bilevel_bench import autodiff, checks, schedules
from bilevel_bench.solvers.base import REFERENCE_SGD, Param, Solver, with_lr


class SOBA(Solver):
    name = "soba"
    single_lower_step = True  # v (and z) persist across upper steps: the single loop
    handles_constraints = False
    params = {
        **Solver.params,
        **REFERENCE_SGD,
        "T": Param(1, checks.positive_int, "(v, z) updates per upper step (1 = SOBA)"),
        "power": Param(0.5, checks.non_negative, "steps lr / (t+1)^power (0 = constant)"),
    }

    def init_extra(self, u, v):
        runs, device = schedules.runs_of(v)
        return {
            "z": autodiff.zeros_like(v),
            "lr_u_t": schedules.decay(runs, device, self.cfg.lr_u, self.cfg.power),
            "lr_v_t": schedules.decay(runs, device, self.cfg.lr_v, self.cfg.power),
        }

    def directions(self, state, live, u):
        """(D_u, D_v, D_z, f) at the current iterates; `live` is bound to the leaves u."""
        v = autodiff.leaves(state["v"])
        f = live.f(v)
        f_u, f_v = autodiff.grad_pair(f, u, v)
        gv = autodiff.grad(live.g(v), v, create_graph=True)
        both = {**{("u", k): t for k, t in u.items()}, **{("v", k): t for k, t in v.items()}}
        products = autodiff.vjp(gv, both, state["z"])  # J z and H z in one backward pass
        jz = {k: products[("u", k)] for k in u}
        hz = {k: products[("v", k)] for k in v}
        return (
            autodiff.add(f_u, jz),
            autodiff.detached(gv),
            autodiff.add(hz, f_v),
            f.detach(),
        )

    def update(self, state, upper_batch, lower_batch):
        rho = schedules.value(state["lr_v_t"])
        state = {
            **state,
            "opt_u": with_lr(state["opt_u"], schedules.value(state["lr_u_t"])),
            "opt_v": with_lr(state["opt_v"], rho),
        }
        u = autodiff.leaves(state["u"])  # u stays put until the last update: one bind
        live = self.problem.bind(u, upper_batch, lower_batch)
        for _ in range(self.T):
            d_u, d_v, d_z, f = self.directions(state, live, u)
            state = self.step_v(state, d_v)
            state = {**state, "z": autodiff.add(state["z"], d_z, scale=-rho)}
        state = self.step_u(state, d_u)  # from the last iteration's old iterates
        state = {
            **state,
            "lr_u_t": schedules.advance(state["lr_u_t"]),
            "lr_v_t": schedules.advance(state["lr_v_t"]),
        }
        return state, {
            "upper_loss": f,
            "lower_grad_norm": autodiff.norm_sq(d_v).sqrt(),
            "linsolve_residual": autodiff.norm_sq(d_z).sqrt(),
        }
