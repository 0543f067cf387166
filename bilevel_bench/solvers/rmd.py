"""Reverse-mode differentiation through T unrolled SGD steps on v (warm-started from the
previous upper step's v). Exactly T steps are unrolled and all T are differentiated, or only the
last `truncate` of them (K-step truncated back-propagation) when truncate > 0.
Memory grows linearly in the number of differentiated steps: autograd stores every iterate.
"""

from __future__ import annotations

from bilevel_bench import autodiff, checks, hypergrad
from bilevel_bench.solvers.base import Param, Solver, require_sgd_lower


class RMD(Solver):
    name = "rmd"
    params = {
        **Solver.params,
        "optimizer_v": Param(
            "sgd", Solver.params["optimizer_v"].check, "sgd: the unrolled map is plain descent"
        ),
        "truncate": Param(
            0, checks.non_negative_int, "differentiate only the last K steps (0 = all T)"
        ),
    }

    @classmethod
    def validate(cls, cfg):
        require_sgd_lower(cfg, cls.name)
        super().validate(cfg)

    def update(self, state, upper_batch, lower_batch):
        u = autodiff.leaves(state["u"])
        live_u = self.problem.bind(u, upper_batch, lower_batch)
        truncate = int(self.cfg.truncate)
        first_differentiated = self.T - truncate if 0 < truncate < self.T else 0
        lr = state["opt_v"]["lr"].to(next(iter(state["v"].values())).dtype)

        v = autodiff.leaves(state["v"])
        for t in range(self.T):
            if t < first_differentiated:  # a plain step: nothing is stored for the backward pass
                stepped = hypergrad.sgd_lower_step(
                    live_u.g, v, lr, self.problem.project_v, _first_order_gradient
                )
                v = autodiff.leaves(stepped)
            else:
                v = hypergrad.sgd_lower_step(
                    live_u.g, v, lr, self.problem.project_v, hypergrad.reverse_gradient
                )
        f = live_u.f(v)
        hypergradient = autodiff.grad(f, u)
        state = self.step_u({**state, "v": autodiff.detached(v)}, hypergradient)
        return state, {"upper_loss": f.detach()}


def _first_order_gradient(objective, v):
    return autodiff.grad(objective(v), v)
