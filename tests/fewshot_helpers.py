"""Shared helpers for the few-shot tests: tiny budgets (composition from solver_harness)."""

from __future__ import annotations

from solver_harness import compose_config  # noqa: F401  (re-exported for the few-shot tests)

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
