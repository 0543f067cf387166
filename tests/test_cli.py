"""The CLI as users meet it: defaults, Hydra behaviour, every solver on every synthetic problem,
clear errors before any work, rows for diverged and failed runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from solver_harness import compose_config, make_solver

from bilevel_bench import results, runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.results import COLUMNS
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks.synthetic import BUILTIN_PROBLEMS, SMD20


def cli(*args: str, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": env_path}
    return subprocess.run(
        [sys.executable, "-m", "bilevel_bench.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def read_runs(results_dir: Path) -> list[dict]:
    with open(results_dir / "runs.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("problem", sorted(BUILTIN_PROBLEMS))
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_solver_runs_every_synthetic_problem(tmp_path, solver, problem):
    cfg = compose_config(
        f"solver={solver}",
        f"dataset={problem}",
        "task.iters=4",
        "task.eval_every=2",
        f"results_dir={tmp_path}",
        "device=cpu",
    )
    (row,) = runner.run(cfg, tmp_path / "run")
    assert row["status"] == "ok", row["error"]
    (stored,) = read_runs(tmp_path)
    assert stored["solver"] == solver and stored["dataset"] == problem
    assert set(COLUMNS) <= set(stored)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "ok"
    curve = (tmp_path / "run" / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,time_s,upper_loss,lower_grad_norm,upper_error")
    assert len(curve) == 1 + 3  # steps 0, 2, 4


def test_default_command_runs_synthetic_and_says_where_results_went(tmp_path):
    done = cli(
        "task.iters=20", f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "[ok] synthetic/smd20 solver=penalty" in done.stdout
    assert f"row appended to {tmp_path}/runs.csv" in done.stdout
    (row,) = read_runs(tmp_path)
    assert row["task"] == "synthetic" and row["status"] == "ok" and row["upper_steps"] == "20"
    assert float(row["runtime_s"]) > 0 and float(row["peak_mem_mb"]) > 0


def test_hydra_help_cfg_and_unknown_option(tmp_path):
    shown = cli("--cfg", "job", "--resolve", "solver=rmd", cwd=tmp_path)
    assert shown.returncode == 0 and "truncate: 0" in shown.stdout
    assert "lr_v: 0.02" in shown.stdout  # configs/tuned/synthetic.yaml's value, not the default
    helped = cli("--help", cwd=tmp_path)
    assert helped.returncode == 0 and "solver: " in helped.stdout and "approxgrad" in helped.stdout
    unknown = cli("solver=newton", cwd=tmp_path)
    assert unknown.returncode != 0 and "Could not find 'solver/newton'" in unknown.stderr


def test_invalid_value_fails_before_any_work(tmp_path):
    done = cli(
        "solver.T=0", f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "solver.T must be an integer >= 1" in done.stderr
    assert not (tmp_path / "runs.csv").exists()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["solver.T=0"], "solver.T"),
        (["solver.lr_u=-0.1"], "solver.lr_u"),
        (["solver.lr_v=0"], "solver.lr_v"),
        (["solver.optimizer_u=rmsprop"], "solver.optimizer_u"),
        (["solver.c_gamma=0.5"], "solver.c_gamma"),
        (["solver=approxgrad", "solver.linsolve=lu"], "solver.linsolve"),
        (["solver=approxgrad", "solver.T2=-3"], "solver.T2"),
        (["solver=rmd", "solver.optimizer_v=adam"], "solver.optimizer_v"),
        (["solver=rmd", "solver.truncate=-1"], "solver.truncate"),
        (["dtype=float16"], "dtype"),
        (["device=tpu"], "device"),
        (["task.iters=0"], "task.iters"),
        (["seed=-1"], "seed"),
        (["max_train_minutes=0"], "max_train_minutes"),
        (["max_train_minutes=soon"], "max_train_minutes"),
        (["max_train_minutes=true"], "max_train_minutes"),
    ],
)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        runner.validate(compose_config(*overrides))


def test_fmd_refuses_a_jacobian_over_budget(tmp_path):
    cfg = compose_config("solver=fmd", "solver.max_jacobian_mb=0.001", f"results_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"max_jacobian_mb.*use solver=rmd"):
        runner.run(cfg, tmp_path / "run")
    # a config error writes no row (issue 14, item 10); the traceback is kept in error.txt
    assert not (tmp_path / "runs.csv").exists()
    assert "max_jacobian_mb" in (tmp_path / "run" / "error.txt").read_text()


def test_diverged_run_leaves_a_row_that_says_so(tmp_path):
    cfg = compose_config(
        "dataset=quadratic",
        "solver=rmd",
        "solver.lr_v=5.0",
        "task.iters=50",
        "task.eval_every=5",
        f"results_dir={tmp_path}",
    )
    (row,) = runner.run(cfg, tmp_path / "run")
    assert row["status"] == "diverged" and "non-finite" in row["error"]
    assert read_runs(tmp_path)[0]["status"] == "diverged"


def test_crashed_run_leaves_a_failed_row_and_raises(tmp_path, monkeypatch):
    from bilevel_bench.tasks import synthetic

    def broken_g(self, u, v, batch):
        raise RuntimeError("lower objective exploded")

    monkeypatch.setattr(synthetic.SMD20, "g", broken_g)
    cfg = compose_config(f"results_dir={tmp_path}", "task.iters=3")
    with pytest.raises(RuntimeError, match="exploded"):
        runner.run(cfg, tmp_path / "run")
    (row,) = read_runs(tmp_path)
    assert row["status"] == "failed" and "lower objective exploded" in row["error"]
    assert "Traceback" in (tmp_path / "run" / "error.txt").read_text()


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_projections_keep_variables_in_the_box(solver):
    """smd20's lower solution v = 1 - u lies outside the box [-0.2, 0.2]: steps push against it."""
    problem = SMD20(dim=4, box=0.2)
    u, v = (
        {k: t[0].clamp(-0.2, 0.2) for k, t in x.items()}
        for x in problem.init_variables([torch.Generator().manual_seed(0)])
    )
    instance, state = make_solver(problem, solver, u=u, v=v, lr_u=1.0, lr_v=0.4, T=3)
    for _ in range(5):
        state, _ = instance.step(state)
        for tensor in (state["u"]["u"], state["v"]["v"]):
            assert tensor.abs().max() <= 0.2
    # v* = 1 - u >= 0.8 lies outside the box: the constraint was active, so this can fail
    assert float(state["v"]["v"].max()) == pytest.approx(0.2)


def test_time_budget_stops_an_evaluated_run_early(tmp_path):
    # a budget far below one step's time: the run stops after its first step, evaluated
    cfg = compose_config(
        "task.iters=200", "task.eval_every=50", "max_train_minutes=1e-9", f"results_dir={tmp_path}"
    )
    (row,) = runner.run(cfg, tmp_path / "run")
    assert row["status"] == "ok" and row["upper_steps"] == 1
    curve = pd.read_csv(tmp_path / "run" / "curve.csv")
    assert list(curve["step"]) == [0, 1]
    assert row["upper_error"] == curve["upper_error"].iloc[-1]
    (full,) = runner.run(
        compose_config("task.iters=200", f"results_dir={tmp_path}"), tmp_path / "f"
    )
    assert full["upper_steps"] == 200 and full["config_hash"] != row["config_hash"]


def test_unset_time_budget_leaves_earlier_config_hashes_alone():
    # rows committed before the key existed must still match (skip-if-done, resume, compare)
    cfg = compose_config("solver=rmd")
    without_key = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "max_train_minutes"])
    assert results.config_hash(cfg) == results.config_hash(without_key)
    assert results.group_hash(cfg) == results.group_hash(without_key)
    cfg.max_train_minutes = 5
    assert results.config_hash(cfg) != results.config_hash(without_key)


def test_seeded_runs_repeat_exactly(tmp_path):
    rows = [
        runner.run(
            compose_config("task.iters=30", f"results_dir={tmp_path}/{i}"), tmp_path / f"{i}"
        )[0]
        for i in range(2)
    ]
    assert rows[0]["upper_error"] == rows[1]["upper_error"]
    assert rows[0]["config_hash"] == rows[1]["config_hash"]
    (other_seed,) = runner.run(
        compose_config("task.iters=30", "seed=1", f"results_dir={tmp_path}/s"), tmp_path / "s"
    )
    assert other_seed["group_hash"] == rows[0]["group_hash"]
    assert other_seed["config_hash"] != rows[0]["config_hash"]
    assert other_seed["upper_error"] != rows[0]["upper_error"]


def test_float64_runs_in_float64(tmp_path):
    cfg = compose_config("dtype=float64", "task.iters=2", f"results_dir={tmp_path}")
    try:
        assert runner.run(cfg, tmp_path / "run")[0]["status"] == "ok"
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
