"""The README's "Bring your own problem" example, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from solver_harness import REPO, compose_config

from bilevel_bench import runner
from bilevel_bench.checks import ConfigError

EXAMPLE = REPO / "examples" / "ridge_hyperparameter.py"
TARGET = "task.problem._target_=ridge_hyperparameter.RidgeHyperparameter"


def test_readme_shows_the_example_verbatim():
    assert EXAMPLE.read_text().strip() in (REPO / "README.md").read_text()


@pytest.mark.parametrize(
    "solver",
    ["penalty", "approxgrad", "rmd", "fmd", "bome", "f2sa", "vpbgd", "soba", "stocbio", "amigo",
     "aid_cg"],
)  # fmt: skip
def test_every_solver_learns_the_ridge_penalty(tmp_path, monkeypatch, solver):
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    cfg = compose_config(
        TARGET,
        f"solver={solver}",
        "task.iters=150",
        "task.eval_every=150",
        "+task.problem.n_features=20",
        f"results_dir={tmp_path}",
    )
    (row,) = runner.run(cfg, tmp_path / "run")
    assert row["status"] == "ok" and row["dataset"] == "ridge"
    curve = pd.read_csv(tmp_path / "run" / "curve.csv")
    # validation loss of the lower-level fit falls by an order of magnitude from w = 0
    assert curve.upper_loss.iloc[-1] < 0.1 * curve.upper_loss.iloc[0]


def test_example_runs_from_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parent)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bilevel_bench.cli",
            TARGET,
            "task.iters=20",
            f"results_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "[ok] synthetic/ridge solver=penalty" in done.stdout


def test_a_bad_target_names_the_key(tmp_path):
    cfg = compose_config("task.problem._target_=no_such_module.Problem", f"results_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"task\.problem\._target_"):
        runner.run(cfg, tmp_path / "run")


def test_a_one_run_problem_runs_as_a_batch_of_seeds(tmp_path, monkeypatch):
    """The example is written for one run; runs=3 computes seeds 0, 1, 2 at once (vmapped) and
    each equals the single run of its seed."""
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    common = [TARGET, "solver=approxgrad", "task.iters=20", "dtype=float64"]
    batch = runner.run(compose_config(*common, "runs=3", f"results_dir={tmp_path}"), tmp_path / "b")
    alone = runner.run(compose_config(*common, "seed=2", f"results_dir={tmp_path}"), tmp_path / "a")
    assert [row["seed"] for row in batch] == [0, 1, 2]
    assert batch[2]["upper_loss"] == pytest.approx(alone[0]["upper_loss"], rel=1e-9)


def test_a_problem_that_breaks_the_vmap_rule_gets_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    cfg = compose_config(
        "task.problem._target_=sweep_helpers.ReadsAValue", "task.iters=2", f"results_dir={tmp_path}"
    )
    with pytest.raises(ConfigError, match=r"ReadsAValue\.g cannot run several runs at once.*item"):
        runner.run(cfg, tmp_path / "run")
