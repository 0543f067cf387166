"""Reverse-mode differentiation through T unrolled SGD steps on v (warm-started from the
previous upper step's v). Exactly T steps are unrolled and all T are differentiated, or only the
last `truncate` of them (K-step truncated back-propagation) when truncate > 0.
Memory grows linearly in the number of differentiated steps: autograd stores every iterate.
"""

from __future__ import annotations

from bilevel_bench import autodiff, checks
from bilevel_bench.solvers.base import Solver, require_sgd_lower, unrolled_sgd_step


class RMD(Solver):
    name = "rmd"
    params = {**Solver.params, "truncate": checks.non_negative_int}

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        require_sgd_lower(cfg, cls.name)

    def step(self):
        upper_batch, lower_batch = self.problem.sample_batches(self.generator)
        live_u = self.bind_live_u(upper_batch, lower_batch)
        truncate = int(self.cfg.truncate)
        first_differentiated = self.T - truncate if 0 < truncate < self.T else 0

        v = {k: t.detach().requires_grad_() for k, t in self.v.items()}
        for t in range(self.T):
            v = unrolled_sgd_step(
                live_u, v, self.lr_v, self.problem.project_v, t >= first_differentiated
            )
        f = live_u.f(v)
        hypergradient = autodiff.grad(f, self.u)
        self._set_lower(v)
        self.apply_u(hypergradient)
        return {"upper_loss": f.detach()}

    def _set_lower(self, v):
        for k, t in self.v.items():
            t.data.copy_(v[k].detach())
