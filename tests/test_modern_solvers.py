"""The solvers after the paper (BOME, F2SA, V-PBGD, SOBA, stocBiO, AmIGO, and the AID-CG label),
float64 on the CPU: their linear-system iterates and hypergradients against the closed form on
random strongly convex quadratics, their convergence on `quadratic` and `smd20`, the schedules in
their state, and short runs (or clear refusals) on the generated few-shot and poisoning tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from poison_helpers import one_thread
from solver_harness import make_solver, run_script
from test_convergence import ConstrainedToSumOne
from test_runs_axis import execute
from tiny_tasks import DENOISE, FEWSHOT, POISON, epochs, steps

from bilevel_bench import hypergrad, schedules
from bilevel_bench.checks import ConfigError
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks.denoise import DenoiseTask
from bilevel_bench.tasks.synthetic import SMD20, Quadratic

NEW = ["aid_cg", "amigo", "bome", "f2sa", "soba", "stocbio", "vpbgd"]
ONE_STEP = ["bome", "soba", "vpbgd"]  # v moves once per upper step: few-shot heads refused


def random_problem(seed):
    return Quadratic(
        upper_dim=4, lower_dim=7, condition=20.0, rho=0.1, seed=seed, dtype=torch.float64
    )


def at_lower_solution(problem, seed, name, **params):
    """(solver, state, u0, closed-form H^-1 grad_v f, closed-form hypergradient) with one run
    at u0 and v = v*(u0), where grad_v g = 0: the lower steps leave v there."""
    u0 = torch.randn(4, generator=torch.Generator().manual_seed(100 + seed))
    v0 = problem.lower_solution(u0)
    solver, state = make_solver(problem, name, u={"u": u0}, v={"v": v0}, **params)
    h_inv_grad = torch.linalg.solve(problem.hessian, v0 - problem.a)  # grad_v f = v - a
    return solver, state, u0, h_inv_grad, problem.hypergradient(u0)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def steps_at_fixed_u(solver, state, u0, count):
    """Upper steps with u put back to u0 after each: the linear-system iterate converges for
    this u alone."""
    for _ in range(count):
        state, _ = solver.step(state)
        state = {**state, "u": {"u": u0[None].clone()}}
    return state


def hypergradient_of_one_step(solver, state, u0):
    """With SGD and a step of 1 on u, one upper step moves u by minus the hypergradient."""
    state = {**state, "opt_u": {**state["opt_u"], "lr": torch.ones(1, dtype=torch.float64)}}
    state, _ = solver.step(state)
    return u0 - state["u"]["u"][0]


# --- linear systems and hypergradients (closed form: tasks.synthetic.Quadratic) -----------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soba_z_and_direction_match_the_closed_form(float64, seed):
    problem = random_problem(seed)
    rho = 1.0 / problem.lipschitz  # constant steps (power 0): z contracts by 1 - rho mu
    solver, state, u0, h_inv_grad, exact = at_lower_solution(
        problem, seed, "soba", lr_v=rho, lr_u=1e-3, power=0.0
    )
    state = steps_at_fixed_u(solver, state, u0, 600)
    assert relative_error(state["z"]["v"][0], -h_inv_grad) < 1e-8  # SOBA: z -> -H^-1 grad_v f
    u = {"u": state["u"]["u"].clone().requires_grad_()}
    d_u, _, _, _ = solver.directions(state, solver.problem.bind(u, None, None), u)
    assert relative_error(d_u["u"][0], exact) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_amigo_warm_started_z_matches_the_closed_form(float64, seed):
    problem = random_problem(seed)
    solver, state, u0, h_inv_grad, exact = at_lower_solution(
        problem, seed, "amigo", T=2, T2=5, lr_q=1.0 / problem.lipschitz, optimizer_u="sgd"
    )
    # 5 iterations per upper step: only the warm start across steps (the amortisation) converges
    state = steps_at_fixed_u(solver, state, u0, 120)
    assert relative_error(state["linsolve"]["x"]["v"][0], h_inv_grad) < 1e-8  # z -> +H^-1 f_v
    assert relative_error(hypergradient_of_one_step(solver, state, u0), exact) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stocbio_neumann_sum_matches_the_closed_form(float64, seed):
    problem = random_problem(seed)
    solver, state, u0, h_inv_grad, exact = at_lower_solution(
        problem, seed, "stocbio", T=2, T2=600, lr_q=1.0 / problem.lipschitz, optimizer_u="sgd"
    )
    estimate = hypergradient_of_one_step(solver, state, u0)
    assert relative_error(estimate, exact) < 1e-4
    # no warm start: one step's sum alone, eta sum_{i<600} (I - eta H)^i grad_v f
    _, after = make_solver(problem, "stocbio", u={"u": u0}, v={"v": problem.lower_solution(u0)},
                           T=2, T2=600, lr_q=1.0 / problem.lipschitz)  # fmt: skip
    after, _ = solver.step(after)
    assert relative_error(after["linsolve"]["x"]["v"][0], h_inv_grad) < 1e-8


def test_richardson_from_zero_is_the_neumann_sum(float64):
    """AmIGO's solve and stocBiO's share one iteration: from q = 0 they agree term for term."""
    generator = torch.Generator().manual_seed(3)
    root = torch.randn(5, 5, generator=generator)
    matrix = root @ root.T / 5 + torch.eye(5)
    rhs = {"x": torch.randn(2, 5, generator=generator)}  # two runs

    def operator(q):
        return {"x": q["x"] @ matrix}

    for iterations in (1, 4, 9):
        results = []
        for name in ("richardson", "neumann"):
            solve = hypergrad.linear_solve(name, iterations, 0.2)
            results.append(solve.solve(operator, rhs, solve.init(rhs))[0]["x"])
        torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-14)


def test_aid_cg_is_approxgrad_with_cg(float64):
    problem = random_problem(0)
    common = dict(T=3, T2=7, sigma=0.0, lr_u=0.05, lr_v=0.01, optimizer_u="sgd", optimizer_v="sgd")
    runs = {}
    for name in ("aid_cg", "approxgrad"):
        extra = {"linsolve": "cg"} if name == "approxgrad" else {}
        solver, state = make_solver(problem, name, **common, **extra)
        for _ in range(3):
            state, _ = solver.step(state)
        runs[name] = state["u"]["u"]
    assert torch.equal(runs["aid_cg"], runs["approxgrad"])
    with pytest.raises(ConfigError, match="linsolve must be one of cg"):
        make_solver(problem, "aid_cg", linsolve="adam")


# --- convergence on the synthetic problems -------------------------------------------------------

# (upper steps, settings, tolerance on |u - u*| and |v - v*|). Why each tolerance:
# - bome: its constant-step joint update circles the solution at a distance O(lr) (the step's
#   projection turns with grad q), so lr 0.05 leaves ~0.05; T = 50 makes v_hat exact enough;
# - vpbgd: the value-gap penalty's bias is O(1/gamma) (gamma ramped to 20);
# - f2sa: bias O(1/lam), lam growing by 1 per step (constant steps, powers 0);
# - the implicit family and soba converge linearly to the exact solution.
CONVERGENCE = {
    "bome": (600, dict(T=50, lr_u=0.05, lr_v=0.05), 0.1),
    "vpbgd": (
        2000,
        dict(
            T=5,
            lr_u=0.2,
            lr_v=0.2,
            lr_omega=0.1,
            gamma_init=1.0,
            gamma_max=20.0,
            gamma_ramp_steps=200,
        ),
        0.05,
    ),  # fmt: skip
    "f2sa": (
        1000,
        dict(
            lr_u=0.05,
            lr_v=0.05,
            lr_penalised=0.05,
            power_u=0.0,
            power_v=0.0,
            power_penalised=0.0,
            delta0=1.0,
            power_delta=0.0,
        ),
        1e-3,
    ),  # fmt: skip
    "soba": (1000, dict(lr_u=0.05, lr_v=0.1, power=0.0), 1e-3),
    "stocbio": (800, dict(lr_u=0.1, lr_v=0.1, T2=60, lr_q=0.15), 1e-3),
    "amigo": (800, dict(lr_u=0.1, lr_v=0.1, lr_q=0.1), 1e-3),
    "aid_cg": (800, dict(lr_u=0.1, lr_v=0.1), 1e-3),
}


def synthetic(name):
    if name == "smd20":
        return SMD20(dim=4, box=5.0, dtype=torch.float64)
    return Quadratic(upper_dim=3, lower_dim=4, condition=5.0, dtype=torch.float64)


@pytest.mark.parametrize("problem_name", ["quadratic", "smd20"])
@pytest.mark.parametrize("name", NEW)
def test_new_solver_reaches_the_optimum(float64, name, problem_name):
    problem = synthetic(problem_name)
    upper_steps, params, tolerance = CONVERGENCE[name]
    solver, state = make_solver(problem, name, **params)
    u_star, v_star = problem.optimum()
    assert (state["u"]["u"][0] - u_star["u"]).norm() > 1.0
    with one_thread():
        for _ in range(upper_steps):
            state, _ = solver.step(state)
    assert (state["u"]["u"][0] - u_star["u"]).norm() < tolerance
    assert (state["v"]["v"][0] - v_star["v"]).norm() < tolerance


# --- schedules in the state ----------------------------------------------------------------------


def test_schedules_decay_and_ramp_per_step():
    decay = schedules.decay(2, "cpu", 0.5, 0.5)
    ramp = schedules.ramp(2, "cpu", 1.0, 3.0, 4)
    constant = schedules.ramp(2, "cpu", 1.0, 3.0, 0)
    seen = []
    for _ in range(6):
        seen.append((schedules.value(decay)[1].item(), schedules.value(ramp)[0].item()))
        decay, ramp = schedules.advance(decay), schedules.advance(ramp)
    assert [d for d, _ in seen] == pytest.approx([0.5 / (t + 1) ** 0.5 for t in range(6)])
    assert [r for _, r in seen] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    assert schedules.value(constant).tolist() == [3.0, 3.0]


@pytest.mark.parametrize("bounded", [True, False])
def test_f2sa_bounds_the_penalised_step_times_lam(float64, bounded):
    problem = synthetic("quadratic")
    # a constant gamma (power 0) with lam growing: gamma_t lam_t grows linearly unless capped
    solver, state = make_solver(
        problem, "f2sa", lr_penalised=0.002, power_penalised=0.0, bound_step_lam=bounded
    )
    products = []  # the penalised copy's effective step on g at each upper step
    for _ in range(300):
        products.append(float(solver.penalised_lr(state)[0] * state["lam"][0]))
        state, _ = solver.step(state)
    assert int(state["lr_u_t"]["t"][0]) == 300
    if bounded:  # gamma_t lam_t never exceeds gamma_0 lam_0
        assert max(products) <= 0.002 * (1 + 1e-9)
    else:
        assert products[-1] > 5 * 0.002


# --- tasks: short runs, and refusals -------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_equality_constraints_are_refused(float64, name):
    with pytest.raises(ConfigError, match="equality constraints"):
        make_solver(ConstrainedToSumOne(), name)


@pytest.mark.parametrize("name", NEW)
def test_short_fewshot_run_or_a_clear_refusal(tmp_path, name):
    overrides = [*FEWSHOT, *steps(2, 2), f"solver={name}", "solver.T2=2"]
    overrides = overrides if name in ("aid_cg", "amigo", "stocbio") else overrides[:-1]
    with one_thread():
        if name in ONE_STEP:
            with pytest.raises(ConfigError, match="task.reset_lower=false"):
                execute(overrides, [0], tmp_path)
            overrides.append("task.reset_lower=false")  # heads carried over: it runs
        result = execute(overrides, [0], tmp_path)
    assert not result.progress.diverged
    assert 0 <= result.metrics(0)["test_acc"] <= 100


@pytest.mark.parametrize("name", NEW)
def test_short_poisoning_run(tmp_path, name):
    overrides = [*POISON, *steps(2, 2), f"solver={name}"]
    if name in ("aid_cg", "amigo", "stocbio"):
        overrides.append("solver.T2=2")
    with one_thread():
        result = execute(overrides, [0], tmp_path)
    assert not result.progress.diverged
    assert all(torch.isfinite(t).all() for t in result.state["u"].values())


@pytest.mark.parametrize("name, copy", [("f2sa", "v_penalised"), ("vpbgd", "omega")])
def test_lower_copy_starts_from_the_pretrained_network(tmp_path, monkeypatch, name, copy):
    """Denoising pre-trains v before the first upper step. A solver's own copy of v must start
    there too: F2SA's penalised copy left at the random initialisation ranked the noisy labels
    above the clean ones (weight AUROC 0.22 on MNIST)."""
    seen = {}

    def spy_prepare(self, u, v):
        seen["initial"] = {k: t.clone() for k, t in v.items()}
        u, v = prepare(self, u, v)
        seen["prepared"] = {k: t.clone() for k, t in v.items()}
        return u, v

    def spy_update(self, state, upper_batch, lower_batch):
        seen.setdefault("copy", {k: t.clone() for k, t in state[copy].items()})
        return update(self, state, upper_batch, lower_batch)

    prepare, update = DenoiseTask.prepare, SOLVERS[name].update
    monkeypatch.setattr(DenoiseTask, "prepare", spy_prepare)
    monkeypatch.setattr(SOLVERS[name], "update", spy_update)
    overrides = [*DENOISE, "model=logreg", *epochs(1, 1), f"solver={name}", "task.retrain=false"]
    with one_thread():
        execute(overrides, [0, 1], tmp_path)
    for key, pretrained in seen["prepared"].items():
        assert not torch.equal(pretrained, seen["initial"][key]), "pre-training changed nothing"
        assert torch.equal(seen["copy"][key], pretrained), key


# --- cost per upper step -------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_engine_writes_step_costs(tmp_path):
    """scripts/bench_engine.py --modes step_cost: one row per solver and T, ratios reported (never
    asserted: timing belongs in the benchmark)."""
    out = tmp_path / "step_cost.csv"
    done = run_script(
        "bench_engine.py", "--quick", "--modes", "step_cost", "--cost-solvers", "bome", "soba",
        "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(out)
    assert list(frame["workload"]) == [
        "mlp_bome_T10",
        "mlp_bome_T20",
        "mlp_soba_T1",
        "mlp_soba_T20",
    ]
    assert (frame["kind"] == "step_cost").all()
    assert np.isfinite(frame[["ratio", "gradients"]].to_numpy()).all()
