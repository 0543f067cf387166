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


@pytest.mark.slow
def test_parallel_mnist50_gives_every_run_half_noisy_labels(tmp_path):
    env = {
        **os.environ,
        # the console scripts live beside this interpreter (venv or system)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "JOBS": "3",
        "SEEDS": "0",
        "OUT": str(tmp_path / "out"),
        "EXTRA": TINY,
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "reproduce_denoise.sh"), "mnist50"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = results.read_rows(tmp_path / "out" / "mnist50" / "runs.csv")
    solvers = sorted(row["solver"] for row in rows)
    assert solvers == ["alternating", "approxgrad", "erm", "erm", "erm", "erm", "erm", "penalty",
                       "rmd"]  # fmt: skip
    assert all(row["status"] == "ok" for row in rows)
    for row in rows:  # the 50% column: baselines and every solver, not only penalty/approxgrad
        config = yaml.safe_load((Path(row["run_dir"]) / ".hydra" / "config.yaml").read_text())
        assert config["task"]["noise"] == 0.5, row["run_dir"]
    # the table is printed at the end, solvers as columns, one row per baseline
    assert "penalty" in done.stdout and "fit_on=clean+val" in done.stdout
