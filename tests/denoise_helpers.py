"""Shared helpers of the denoising tests: tiny budgets, run in-process."""

from __future__ import annotations

from pathlib import Path

from solver_harness import compose_config

from bilevel_bench import runner

# a budget that exercises every code path in well under a second per run
TINY = [
    "task=denoise",
    "dataset=fake",
    "model=logreg",
    "task.epochs=1",
    "task.eval_every=2",
    "task.pretrain_epochs=1",
    "task.retrain=true",
    "task.retrain_epochs=1",
    "solver.T=2",
    "progress=false",
]


def run(tmp_path: Path, overrides, name="run"):
    """The row of a single run."""
    cfg = compose_config(*overrides, f"results_dir={tmp_path / 'results'}")
    (row,) = runner.run(cfg, tmp_path / name)
    return row
