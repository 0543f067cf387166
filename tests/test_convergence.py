"""Penalty, ApproxGrad and RMD reach the known optimum of the synthetic problems (float64)."""

from __future__ import annotations

import pytest
import torch
from solver_harness import run_solver

from bilevel_bench.problem import BilevelProblem
from bilevel_bench.tasks.synthetic import SMD20, SMD21, SMD24, Quadratic

# The authors' synthetic penalty schedule (paper section 3.1), with faster learning rates.
PENALTY = dict(
    gamma0=1.0,
    lam0=10.0,
    eps0=1.0,
    c_gamma=1.1,
    c_lam=1 / 1.1,
    c_eps=1 / 1.1,
    lr_decay=1 / 1.1,
    lr_u=0.05,
    lr_v=0.05,
)
SETTINGS = {
    "penalty": dict(T=10, **PENALTY),
    "approxgrad": dict(T=5, T2=10, lr_u=0.05, lr_v=0.05, lr_q=0.05, sigma=1e-6),
    "rmd": dict(T=30, lr_u=0.05, lr_v=0.05),
}


def problems():
    small = dict(dim=4, box=5.0, dtype=torch.float64)
    return {
        "smd20": SMD20(**small),
        "smd21": SMD21(**small),
        "smd24": SMD24(block_dim=4, n_blocks=1, rank=2, dtype=torch.float64),
        "quadratic": Quadratic(upper_dim=3, lower_dim=4, condition=5.0, dtype=torch.float64),
    }


@pytest.mark.parametrize("problem_name", ["smd20", "smd21", "quadratic"])
@pytest.mark.parametrize("solver", ["penalty", "approxgrad", "rmd"])
def test_solver_reaches_the_optimum(float64, solver, problem_name):
    problem = problems()[problem_name]
    u0, v0 = problem.init_variables([torch.Generator().manual_seed(0)])
    (start,) = problem.upper_error(u0, v0)
    _, _, state = run_solver(problem, solver, steps=600, **SETTINGS[solver])
    assert start > 1.0
    (end,) = problem.upper_error(state["u"], state["v"])
    assert end < 0.02 * start


def test_penalty_schedule_tightens_as_it_converges(float64):
    problem = problems()["quadratic"]
    _, _, state = run_solver(problem, "penalty", steps=300, **SETTINGS["penalty"])
    tightenings = int(state["tightenings"][0])
    assert tightenings > 5
    assert float(state["gamma"][0]) == pytest.approx(1.1**tightenings)
    assert float(state["opt_u"]["lr"][0]) == pytest.approx(0.05 / 1.1**tightenings)
    quartic = dict(SETTINGS["penalty"], quartic_tolerance=True)
    _, _, quirk = run_solver(problem, "penalty", steps=300, **quartic)
    assert int(quirk["tightenings"][0]) != tightenings  # the authors' |.|^4 test differs


class ConstrainedToSumOne(BilevelProblem):
    """g = |v - u|^2 / 2 so v* = u; f = |u|^2 + |v|^2; with h = sum(u) - 1 the answer is
    u = v = (1/2, 1/2) instead of the unconstrained 0."""

    def init_variables(self, generator):
        return {"u": torch.tensor([2.0, -1.0])}, {"v": torch.zeros(2)}  # one run (vmapped)

    def f(self, u, v, batch):
        return (u["u"] ** 2).sum() + (v["v"] ** 2).sum()

    def g(self, u, v, batch):
        return 0.5 * ((v["v"] - u["u"]) ** 2).sum()

    def h(self, u, v):
        return u["u"].sum() - 1.0


def test_penalty_enforces_an_equality_constraint(float64):
    u, v, _ = run_solver(ConstrainedToSumOne(), "penalty", steps=600, **SETTINGS["penalty"])
    assert torch.allclose(u["u"].detach(), torch.tensor([0.5, 0.5]), atol=0.02)
    assert torch.allclose(v["v"].detach(), torch.tensor([0.5, 0.5]), atol=0.02)
