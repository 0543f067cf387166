"""Alternating descent (the authors' "GD" baseline): T steps on g for v, then one step on u
along grad_u f alone. It ignores how v*(u) moves with u, so it is biased; a floor to beat."""

from __future__ import annotations

from bilevel_bench import autodiff
from bilevel_bench.solvers.base import Solver


class Alternating(Solver):
    name = "alternating"

    def step(self):
        upper_batch, lower_batch = self.problem.sample_batches(self.generator)
        fixed_u = self.bind_fixed_u(upper_batch, lower_batch)
        gv = self.descend_lower(fixed_u.g, self.T)
        if not self.updates_upper:  # ERM: the lower phase is the whole step
            f = fixed_u.f(self.v)
        else:
            f = self.bind_live_u(upper_batch, lower_batch).f(self.v)
            self.apply_u(autodiff.grad(f, self.u))
        return {"upper_loss": f.detach(), "lower_grad_norm": autodiff.norm_sq(gv).sqrt()}
