"""Shared helpers for the few-shot tests: Hydra composition and tiny runs."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")

# small enough for seconds on 2 CPU cores
TINY = [
    "task=fewshot",
    "dataset=fake_fewshot",
    "device=cpu",
    "model.channels=8",
    "task.ways=3",
    "task.shots=1",
    "task.queries=2",
    "task.meta_batch=3",
    "task.iters=3",
    "task.eval_every=2",
    "task.eval_episodes=6",
    "task.eval_steps=3",
    "task.eval_chunk=4",
    "solver.T=2",
    "progress=false",
]


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))
