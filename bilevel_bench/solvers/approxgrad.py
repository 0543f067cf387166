"""ApproxGrad: approximate implicit differentiation.

T1 (= solver.T) steps on g, then T2 iterations of a linear solve (H_vv + sigma I) q = grad_v f
with Hessian-vector products, warm-started from the previous q. Hypergradient:
grad_u f - H_uv q.

`linsolve`: `adam` / `gd` minimise ||(H_vv + sigma I) q - grad_v f||^2 as the authors' code does
(two Hessian-vector products per iteration); `cg` runs conjugate gradients (one product).
"""

from __future__ import annotations

import torch

from bilevel_bench import autodiff, checks
from bilevel_bench.solvers.base import Solver


class ApproxGrad(Solver):
    name = "approxgrad"
    params = {
        **Solver.params,
        "T2": checks.positive_int,
        "lr_q": checks.positive,
        "sigma": checks.non_negative,
        "linsolve": checks.one_of("adam", "gd", "cg"),
    }

    def __init__(self, problem, u, v, cfg, generator):
        super().__init__(problem, u, v, cfg, generator)
        self.q = autodiff.zeros_like(autodiff.detached(v))
        self.sigma = float(cfg.sigma)
        self.opt_q = None
        if cfg.linsolve != "cg":
            self.q = {k: t.requires_grad_() for k, t in self.q.items()}
            optimizer = torch.optim.Adam if cfg.linsolve == "adam" else torch.optim.SGD
            self.opt_q = optimizer(list(self.q.values()), lr=float(cfg.lr_q))

    def step(self):
        upper_batch, lower_batch = self.problem.sample_batches(self.generator)
        fixed_u = self.bind_fixed_u(upper_batch, lower_batch)
        self.descend_lower(fixed_u.g, self.T)

        g = fixed_u.g(self.v)
        gv = autodiff.grad(g, self.v, create_graph=True)
        rhs = autodiff.grad(fixed_u.f(self.v), self.v)

        def operator(q):
            hq = autodiff.vjp(gv, self.v, q)
            return {k: hq[k] + self.sigma * q[k] for k in q}

        residual = self._solve(operator, rhs)

        live_u = self.bind_live_u(upper_batch, lower_batch)
        f = live_u.f(self.v)
        grad_u_f = autodiff.grad(f, self.u, retain_graph=True)
        gv_live = autodiff.grad(live_u.g(self.v), self.v, create_graph=True)
        mixed = autodiff.vjp(gv_live, self.u, autodiff.detached(self.q))
        self.apply_u(autodiff.add(grad_u_f, mixed, scale=-1.0))
        return {
            "upper_loss": f.detach(),
            "lower_grad_norm": autodiff.norm_sq(gv).detach().sqrt(),
            "linsolve_residual": residual,
        }

    def _solve(self, operator, rhs) -> torch.Tensor:
        """Update self.q towards operator^-1 rhs; returns the final residual norm."""
        if self.cfg.linsolve == "cg":
            self.q, residual = conjugate_gradient(operator, rhs, self.q, int(self.cfg.T2))
            return residual
        for _ in range(int(self.cfg.T2)):
            q = autodiff.detached(self.q)
            r = {k: aq - rhs[k] for k, aq in operator(q).items()}
            # gradient of ||A q - b||^2 is 2 A (A q - b), A symmetric
            ar = operator(r)
            for k, t in self.q.items():
                t.grad = 2.0 * ar[k]
            self.opt_q.step()
        r = {k: aq - rhs[k] for k, aq in operator(autodiff.detached(self.q)).items()}
        return autodiff.norm_sq(r).sqrt().detach()

    def state_dict(self):
        state = {**super().state_dict(), "q": autodiff.detached(self.q)}
        if self.opt_q is not None:
            state["opt_q"] = self.opt_q.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            for k, t in self.q.items():
                t.copy_(state["q"][k])
        if self.opt_q is not None:
            self.opt_q.load_state_dict(state["opt_q"])


def conjugate_gradient(operator, rhs, x0, iterations: int, tol: float = 0.0):
    """Solve A x = rhs for symmetric positive definite A given as a product; warm start x0."""
    x = autodiff.detached(x0)
    ax = operator(x)
    r = {k: rhs[k] - ax[k] for k in rhs}
    p = dict(r)
    rs = autodiff.norm_sq(r)
    for _ in range(iterations):
        if float(rs) <= tol:
            break
        ap = operator(p)
        alpha = rs / autodiff.dot(p, ap)
        x = autodiff.add(x, p, scale=alpha)
        r = autodiff.add(r, ap, scale=-alpha)
        rs_new = autodiff.norm_sq(r)
        p = {k: r[k] + (rs_new / rs) * p[k] for k in r}
        rs = rs_new
    return {k: t.detach() for k, t in x.items()}, rs.sqrt().detach()
