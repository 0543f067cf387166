"""Alternating descent (the authors' "GD" baseline): T steps on g for v, then one step on u
along grad_u f alone. It ignores how v*(u) moves with u, so it is biased; a floor to beat."""

from __future__ import annotations

from bilevel_bench import autodiff
from bilevel_bench.solvers.base import Solver


class Alternating(Solver):
    name = "alternating"

    def update(self, state, upper_batch, lower_batch):
        fixed_u = self.bind_fixed_u(state, upper_batch, lower_batch)
        state, gv = self.descend_lower(state, fixed_u.g, self.T)
        if not self.updates_upper:  # ERM: the lower phase is the whole step
            f = fixed_u.f(state["v"])
        else:
            u = autodiff.leaves(state["u"])
            f = self.problem.bind(u, upper_batch, lower_batch).f(state["v"])
            state = self.step_u(state, autodiff.grad(f, u))
        return state, {"upper_loss": f.detach(), "lower_grad_norm": autodiff.norm_sq(gv).sqrt()}
