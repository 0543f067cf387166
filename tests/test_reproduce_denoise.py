"""scripts/reproduce_denoise.sh end to end on generated data: every solver and baseline of a
setting leaves a row, in parallel mode too, and the setting's overrides reach every run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bilevel_bench import results

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "dataset=fake model=logreg task.epochs=1 task.eval_every=2 task.pretrain_epochs=1 "
    "solver.T=2 device=cpu"
)


def _script(tmp_path, scale, **env_extra):
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "SEEDS": "0",
        "OUT": str(tmp_path / "out"),
        "OMP_NUM_THREADS": "1",
        **env_extra,
    }
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "reproduce_denoise.sh"), scale],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_parallel_mnist50_gives_every_run_half_noisy_labels(tmp_path):
    done = _script(tmp_path, "mnist50", JOBS="3", EXTRA=TINY)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = results.read_rows(tmp_path / "out" / "mnist50" / "runs.csv")
    solvers = sorted(row["solver"] for row in rows)
    assert solvers == ["alternating", "approxgrad", "erm", "erm", "erm", "erm", "erm", "penalty",
                       "rmd"]  # fmt: skip
    assert all(row["status"] == "ok" for row in rows)
    for row in rows:  # the 50% column: baselines and every solver, not only penalty/approxgrad
        config = yaml.safe_load((Path(row["run_dir"]) / ".hydra" / "config.yaml").read_text())
        assert config["task"]["noise"] == 0.5, row["run_dir"]
    # the table is printed at the end, solvers as columns, one row per baseline (its label in
    # the baseline column: clean+val is the paper's oracle)
    assert "penalty" in done.stdout and "| oracle " in done.stdout


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_bad_jobs_value_names_the_variable(tmp_path, jobs):
    done = _script(tmp_path, "small", JOBS=jobs)
    assert done.returncode == 2 and f"JOBS={jobs}" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_parallel_runs_that_fail_make_the_script_fail_and_leave_their_logs(tmp_path):
    done = _script(tmp_path, "mnist", JOBS="3", EXTRA=TINY + " solver.T=0")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no run wrote a row" in done.stderr and "logs" in done.stderr
    logs = sorted((tmp_path / "out" / "mnist" / "logs").glob("*.log"))
    assert len(logs) == 9  # one per (solver or baseline, seed)
    assert all("solver.T must be an integer >= 1" in log.read_text() for log in logs)
