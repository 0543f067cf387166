"""Shared helpers of the denoising tests: compose the Hydra config and run in-process."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from bilevel_bench import runner

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
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


def compose_config(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run(tmp_path: Path, overrides, name="run"):
    cfg = compose_config([*overrides, f"results_dir={tmp_path / 'results'}"])
    return runner.run(cfg, tmp_path / name)
