"""BOME (Liu, Ye, Wright, Stone, Liu; NeurIPS 2022, "BOME! Bilevel Optimization Made Easy").

First order, value-function based. Per upper step:
1. v_hat <- T plain gradient steps on g(u, .) from the current v (steps of size lr_v);
2. the value gap q(u, v) = g(u, v) - g(u, v_hat), v_hat held constant, should fall to 0;
3. lam = max(phi - <grad f, grad q>, 0) / (|grad q|^2 + 1e-8), grad stacking the u and v parts;
4. one joint step (u, v) <- (u, v) - lr (grad f + lam grad q).
lam is the smallest multiplier that makes the step decrease q at rate phi: where f's own
direction already does, the step is plain descent on f. All of it per run.
Cost: T + 3 gradients per upper step (T for v_hat, grad f, grad g at v, grad_u g at v_hat).
"""

from __future__ import annotations

import torch

from bilevel_bench import autodiff, checks
from bilevel_bench.solvers.base import REFERENCE_SGD, Param, Solver, descend_copy


class BOME(Solver):
    name = "bome"
    single_lower_step = True  # the joint step moves v once per upper step
    handles_constraints = False
    params = {
        **Solver.params,
        **REFERENCE_SGD,
        "phi": Param(
            "grad_norm",
            checks.one_of("grad_norm", "value"),
            "grad_norm: phi = eta |grad q|^2 (default: the paper's toy script and benchopt) | "
            "value: phi = eta q (the authors' data-cleaning scripts)",
        ),
        "eta": Param(0.5, checks.positive, "the phi rule's eta (authors' toy grid 0.1/0.5/0.9)"),
    }

    def update(self, state, upper_batch, lower_batch):
        fixed_u = self.bind_fixed_u(state, upper_batch, lower_batch)
        v_hat = descend_copy(self.problem, fixed_u.g, state["v"], state["opt_v"]["lr"], self.T)

        u, v = autodiff.leaves(state["u"]), autodiff.leaves(state["v"])
        live = self.problem.bind(u, upper_batch, lower_batch)
        f = live.f(v)
        f_u, f_v = autodiff.grad_pair(f, u, v)
        gap = live.g(v) - live.g(v_hat)
        q_u, q_v = autodiff.grad_pair(gap, u, v)

        inner = autodiff.dot(f_u, q_u) + autodiff.dot(f_v, q_v)
        q_norm_sq = autodiff.norm_sq(q_u) + autodiff.norm_sq(q_v)
        target = self.cfg.eta * (q_norm_sq if self.cfg.phi == "grad_norm" else gap.detach())
        lam = torch.clamp(target - inner, min=0) / (q_norm_sq + 1e-8)

        state = self.step_u(state, autodiff.add(f_u, q_u, scale=lam))
        state = self.step_v(state, autodiff.add(f_v, q_v, scale=lam))
        return state, {
            "upper_loss": f.detach(),
            "lower_grad_norm": autodiff.norm_sq(q_v).sqrt(),  # grad_v q = grad_v g(u, v)
            "value_gap": gap.detach(),
            "lam": lam,
        }
