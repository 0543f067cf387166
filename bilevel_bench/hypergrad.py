"""Stateless hypergradient pieces that solvers compose (in the spirit of hypertorch).

- Implicit differentiation: grad_u f - H_uv q with (H_vv + sigma I) q = grad_v f, where q comes
  from a pluggable linear solve (`cg`, `gd`, `adam`, `neumann`, `richardson`). Every solve has one signature,
  `solve(operator, rhs, state) -> (state, residual)`, with its iterate (the warm start) and any
  moments in `state`, a fixed number of iterations and per-run step sizes: no host sync.
- The unrolled lower map v -> project(v - lr grad_v g(u, v)), written once: RMD
  differentiates through it in reverse mode, FMD in forward mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bilevel_bench import autodiff, optim
from bilevel_bench.problem import BoundObjectives, Variables

Operator = Callable[[Variables], Variables]


# --- linear solves of A q = b for symmetric positive (semi)definite A given as a product --------


class ConjugateGradient:
    """Conjugate gradients, warm-started from the previous q; one product per iteration."""

    def __init__(self, iterations: int, lr: float):
        self.iterations = iterations

    def init(self, like: Variables) -> dict:
        return {"x": autodiff.zeros_like(like)}

    def solve(self, operator: Operator, rhs: Variables, state: dict):
        x = state["x"]
        ax = operator(x)
        r = {k: rhs[k] - ax[k] for k in rhs}
        p = dict(r)
        rs = autodiff.norm_sq(r)
        for _ in range(self.iterations):
            ap = operator(p)
            curvature = autodiff.dot(p, ap)
            # a run whose residual is exactly zero has converged (p = r = 0): it stops moving,
            # without a host-side test (0 / 0 would otherwise give NaN). Negative curvature
            # (a nonconvex lower level) keeps its negative step, as plain CG does.
            alpha = torch.where(curvature != 0, rs / curvature, torch.zeros_like(rs))
            x = autodiff.add(x, p, scale=alpha)
            r = autodiff.add(r, ap, scale=-alpha)
            rs_new = autodiff.norm_sq(r)
            beta = torch.where(rs > 0, rs_new / rs, torch.zeros_like(rs))
            p = {k: r[k] + autodiff.per_run(beta, p[k]) * p[k] for k in r}
            rs = rs_new
        return {"x": autodiff.detached(x)}, rs.sqrt().detach()


class LeastSquaresDescent:
    """Minimise |A q - b|^2 with an optimiser (the authors' ApproxGrad): gradient 2 A (A q - b),
    two products per iteration. The residual returned is the one before the last update."""

    def __init__(self, iterations: int, lr: float, optimizer: str):
        self.iterations, self.lr, self.optimizer = iterations, lr, optim.make(optimizer)

    def init(self, like: Variables) -> dict:
        x = autodiff.zeros_like(like)
        return {"x": x, "optimizer": self.optimizer.init(x, self.lr)}

    def solve(self, operator: Operator, rhs: Variables, state: dict):
        x, moments = state["x"], state["optimizer"]
        residual = None
        for _ in range(self.iterations):
            r = {k: aq - rhs[k] for k, aq in operator(x).items()}
            ar = operator(r)
            x, moments = self.optimizer.update(x, {k: 2.0 * ar[k] for k in ar}, moments)
            residual = r
        return {"x": x, "optimizer": moments}, autodiff.norm_sq(residual).sqrt().detach()


class Neumann:
    """q = lr sum_{i<n} (I - lr A)^i b: the truncated Neumann series (stocBiO); no warm start."""

    def __init__(self, iterations: int, lr: float):
        self.iterations, self.lr = iterations, lr

    def init(self, like: Variables) -> dict:
        return {"x": autodiff.zeros_like(like)}

    def solve(self, operator: Operator, rhs: Variables, state: dict):
        term = {k: self.lr * t for k, t in rhs.items()}
        total = dict(term)
        for _ in range(self.iterations - 1):
            product = operator(term)
            term = {k: term[k] - self.lr * product[k] for k in term}
            total = {k: total[k] + term[k] for k in total}
        product = operator(total)
        residual = autodiff.norm_sq({k: product[k] - rhs[k] for k in rhs}).sqrt().detach()
        return {"x": autodiff.detached(total)}, residual


class Richardson:
    """Gradient descent on the energy 1/2 q^T A q - b^T q (the Richardson iteration
    q <- q - lr (A q - b)), warm-started from the previous q: AmIGO's amortised solve. One
    product per iteration; from q = 0, n iterations give the n-term Neumann sum above. The
    residual returned is the one before the last update."""

    def __init__(self, iterations: int, lr: float):
        self.iterations, self.lr = iterations, lr

    def init(self, like: Variables) -> dict:
        return {"x": autodiff.zeros_like(like)}

    def solve(self, operator: Operator, rhs: Variables, state: dict):
        x, residual = state["x"], None
        for _ in range(self.iterations):
            residual = {k: ax - rhs[k] for k, ax in operator(x).items()}
            x = autodiff.add(x, residual, scale=-self.lr)
        return {"x": autodiff.detached(x)}, autodiff.norm_sq(residual).sqrt().detach()


LINEAR_SOLVES = {
    "cg": ConjugateGradient,
    "gd": lambda iterations, lr: LeastSquaresDescent(iterations, lr, "sgd"),
    "adam": lambda iterations, lr: LeastSquaresDescent(iterations, lr, "adam"),
    "neumann": Neumann,
    "richardson": Richardson,
}


def linear_solve(name: str, iterations: int, lr: float):
    return LINEAR_SOLVES[name](iterations, lr)


def implicit_hypergradient(
    bound: BoundObjectives, u: Variables, v: Variables, solve, solve_state: dict, sigma: float
):
    """(hypergradient, f, grad_v g, solve_state, residual) at (u, v), both live leaves.

    grad_v g is built once, with u and v live: the same second-order graph serves H_vv q in the
    solve and H_uv q after it.
    """
    f = bound.f(v)
    grad_u_f, grad_v_f = autodiff.grad_pair(f, u, v)
    gv = autodiff.grad(bound.g(v), v, create_graph=True)

    def operator(q):
        hq = autodiff.vjp(gv, v, q)
        return {k: hq[k] + sigma * q[k] for k in q}

    solve_state, residual = solve.solve(operator, grad_v_f, solve_state)
    mixed = autodiff.vjp(gv, u, solve_state["x"])
    return autodiff.add(grad_u_f, mixed, scale=-1.0), f, gv, solve_state, residual


# --- the unrolled lower map ----------------------------------------------------------------------


def reverse_gradient(objective, v: Variables) -> Variables:
    """grad_v objective keeping the autograd graph: RMD back-propagates through it."""
    return autodiff.grad(objective(v), v, create_graph=True)


def functional_gradient(objective, v: Variables) -> Variables:
    """grad_v objective as a torch.func transform: FMD pushes tangents through it with jvp."""
    return torch.func.grad(lambda x: objective(x).sum())(v)


def sgd_lower_step(objective, v: Variables, lr: torch.Tensor, project, differentiate) -> Variables:
    """v -> project(v - lr grad_v objective(v)): the map RMD and FMD differentiate through.
    `lr`: [K], in v's dtype (cast once per upper step, not at every unrolled step)."""
    gv = differentiate(objective, v)
    return project({k: v[k] - _per_run(lr, v[k]) * gv[k] for k in v})


def _per_run(scalars: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scalars.view(scalars.shape + (1,) * (like.dim() - 1))
