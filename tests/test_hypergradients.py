"""Hypergradients against the closed form on random strongly convex quadratic problems."""

from __future__ import annotations

import pytest
import torch
from solver_harness import run_solver

from bilevel_bench.tasks.synthetic import Quadratic

SEEDS = [0, 1, 2]


def one_step_hypergradient(problem, name, u0, v0, **params):
    """With SGD and lr_u = 1 on u, one upper step moves u by exactly minus the hypergradient."""
    u, _, _ = run_solver(
        problem, name, steps=1, u={"u": u0}, v={"v": v0}, optimizer_u="sgd", lr_u=1.0, **params
    )
    return u0 - u["u"].detach()


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def random_problem(seed):
    return Quadratic(
        upper_dim=4, lower_dim=7, condition=20.0, rho=0.1, seed=seed, dtype=torch.float64
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "name, params",
    [
        ("approxgrad", dict(T=3, T2=50, linsolve="cg", sigma=0.0, lr_v=0.01, optimizer_v="sgd")),
        ("rmd", dict(T=600, optimizer_v="sgd")),
        ("fmd", dict(T=600, optimizer_v="sgd")),
    ],
)
def test_hypergradient_matches_closed_form(float64, seed, name, params):
    problem = random_problem(seed)
    u0 = torch.randn(4, generator=torch.Generator().manual_seed(100 + seed))
    v0 = problem.lower_solution(u0)  # at v*(u) the closed form is the true hypergradient
    if name in ("rmd", "fmd"):
        params = {**params, "lr_v": 1.0 / problem.lipschitz}
    estimate = one_step_hypergradient(problem, name, u0, v0, **params)
    assert relative_error(estimate, problem.hypergradient(u0)) < 1e-4


@pytest.mark.parametrize("linsolve", ["adam", "gd"])
def test_approxgrad_iterative_solves_converge(float64, linsolve):
    problem = random_problem(0)
    u0 = torch.randn(4, generator=torch.Generator().manual_seed(7))
    v0 = problem.lower_solution(u0)
    lr_q = 0.005 if linsolve == "adam" else 1.0 / problem.lipschitz**2 / 2
    estimate = one_step_hypergradient(
        problem,
        "approxgrad",
        u0,
        v0,
        T=1,
        T2=3000,
        linsolve=linsolve,
        lr_q=lr_q,
        sigma=0.0,
        lr_v=1e-3,
        optimizer_v="sgd",
    )
    assert relative_error(estimate, problem.hypergradient(u0)) < 1e-3


@pytest.mark.parametrize("T", [1, 2, 5, 17])
def test_rmd_and_fmd_differentiate_the_same_unrolled_map(float64, T):
    """Away from v*, with few steps: both must give the exact derivative of the same T steps."""
    problem = random_problem(3)
    gen = torch.Generator().manual_seed(11)
    u0, v0 = torch.randn(4, generator=gen), torch.randn(7, generator=gen)
    params = dict(T=T, lr_v=0.5 / problem.lipschitz, optimizer_v="sgd")
    rmd = one_step_hypergradient(problem, "rmd", u0, v0, **params)
    fmd = one_step_hypergradient(problem, "fmd", u0, v0, **params)
    assert relative_error(fmd, rmd) < 1e-6


def test_rmd_unrolls_exactly_T_steps(float64):
    """The derivative of T unrolled steps from v0 (constant) has the closed form
    dv_T/du = sum_{t<T} (I - lr H)^t lr B; no off-by-one."""
    problem = random_problem(4)
    gen = torch.Generator().manual_seed(5)
    u0, v0 = torch.randn(4, generator=gen), torch.randn(7, generator=gen)
    lr, T = 0.3 / problem.lipschitz, 4
    contraction = torch.eye(7) - lr * problem.hessian
    jacobian = sum(torch.matrix_power(contraction, t) @ (lr * problem.b) for t in range(T))
    v_T = v0
    for _ in range(T):
        v_T = v_T - lr * (problem.hessian @ v_T - problem.b @ u0)
    expected = jacobian.T @ (v_T - problem.a) + problem.rho * u0
    estimate = one_step_hypergradient(problem, "rmd", u0, v0, T=T, lr_v=lr, optimizer_v="sgd")
    assert relative_error(estimate, expected) < 1e-10


def test_truncated_rmd_keeps_only_the_last_steps(float64):
    problem = random_problem(5)
    gen = torch.Generator().manual_seed(6)
    u0, v0 = torch.randn(4, generator=gen), torch.randn(7, generator=gen)
    params = dict(T=6, lr_v=0.3 / problem.lipschitz, optimizer_v="sgd")
    full = one_step_hypergradient(problem, "rmd", u0, v0, **params)
    same = one_step_hypergradient(problem, "rmd", u0, v0, truncate=6, **params)
    short = one_step_hypergradient(problem, "rmd", u0, v0, truncate=2, **params)
    assert relative_error(same, full) < 1e-12
    assert relative_error(short, full) > 1e-3
