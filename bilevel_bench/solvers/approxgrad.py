"""ApproxGrad: approximate implicit differentiation.

T1 (= solver.T) steps on g, then T2 iterations of a linear solve (H_vv + sigma I) q = grad_v f
with Hessian-vector products, warm-started from the previous q. Hypergradient:
grad_u f - H_uv q. One second-order graph per step serves both products
(bilevel_bench.hypergrad.implicit_hypergradient).

`linsolve`: `adam` / `gd` minimise ||(H_vv + sigma I) q - grad_v f||^2 as the authors' code does
(two Hessian-vector products per iteration); `cg` runs conjugate gradients (one product);
`neumann` sums the truncated Neumann series with step lr_q (no warm start); `richardson` runs
gradient descent on 1/2 q^T A q - grad_v f^T q with step lr_q (one product, warm-started).
The labels aid_cg, stocbio and amigo are this solver with one linear solve each.
"""

from __future__ import annotations

from bilevel_bench import autodiff, checks, hypergrad
from bilevel_bench.solvers.base import REFERENCE_SGD, Param, Solver


class ApproxGrad(Solver):
    name = "approxgrad"
    params = {
        **Solver.params,
        "T2": Param(10, checks.positive_int, "iterations of the linear solve"),
        "lr_q": Param(0.01, checks.positive, "step of the iterative solves (not cg)"),
        "sigma": Param(0.001, checks.non_negative, "damping: solve (H_vv + sigma I) q = grad_v f"),
        "linsolve": Param(
            "adam",
            checks.one_of(*hypergrad.LINEAR_SOLVES),
            "adam (authors) | gd | cg | neumann | richardson",
        ),
    }

    def __init__(self, problem, cfg):
        super().__init__(problem, cfg)
        self.solve = hypergrad.linear_solve(cfg.linsolve, int(cfg.T2), float(cfg.lr_q))

    def init_extra(self, u, v):
        return {"linsolve": self.solve.init(v)}

    def update(self, state, upper_batch, lower_batch):
        fixed_u = self.bind_fixed_u(state, upper_batch, lower_batch)
        state, _ = self.descend_lower(state, fixed_u.g, self.T)

        u, v = autodiff.leaves(state["u"]), autodiff.leaves(state["v"])
        live_u = self.problem.bind(u, upper_batch, lower_batch)
        direction, f, gv, solved, residual = hypergrad.implicit_hypergradient(
            live_u, u, v, self.solve, state["linsolve"], float(self.cfg.sigma)
        )
        state = self.step_u({**state, "linsolve": solved}, direction)
        return state, {
            "upper_loss": f.detach(),
            "lower_grad_norm": autodiff.norm_sq(gv).detach().sqrt(),
            "linsolve_residual": residual,
        }


# What the published implicit methods share, unlike ApproxGrad's own defaults: plain gradient
# steps as their reference code (REFERENCE_SGD), and no damping (the method as published).
PUBLISHED = {
    "sigma": (0.0, "damping: solve (H + sigma I) q = grad_v f (0: the method as published)")
}


def fixed_solve(linsolve: str, doc: str, **defaults: tuple) -> dict[str, Param]:
    """ApproxGrad's declarations for a published method with a label of its own (aid_cg,
    stocbio, amigo): the linear solve fixed to `linsolve`, the PUBLISHED defaults, and
    `defaults` = {key: (value, doc)} replacing declared ones."""
    params = {
        **ApproxGrad.params,
        **REFERENCE_SGD,
        "linsolve": Param(linsolve, checks.one_of(linsolve), doc),
    }
    for key, (value, key_doc) in {**PUBLISHED, **defaults}.items():
        params[key] = Param(value, params[key].check, key_doc)
    return params
