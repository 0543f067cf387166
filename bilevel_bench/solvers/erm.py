"""Empirical risk minimisation baseline: T steps on g per upper step; u never changes.

On the denoising task this trains the network on the data chosen by task.fit_on with the
initial (uniform) weights; on any other problem it solves the lower level for the initial u,
which is the reference every bilevel solver has to improve on.
"""

from __future__ import annotations

from bilevel_bench import autodiff
from bilevel_bench.solvers.base import Solver


class ERM(Solver):
    name = "erm"

    def step(self):
        upper_batch, lower_batch = self.problem.sample_batches(self.generator)
        fixed_u = self.bind_fixed_u(upper_batch, lower_batch)
        gv = self.descend_lower(fixed_u.g, self.T)
        f = fixed_u.f(self.v)
        return {"upper_loss": f.detach(), "lower_grad_norm": autodiff.norm_sq(gv).sqrt()}
