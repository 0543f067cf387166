"""What the runner needs from a task: a problem, a step budget and an evaluation.

A task module exposes `build(cfg, device, generator) -> Task`; register it in TASKS
(bilevel_bench/tasks/__init__.py) and add configs/task/NAME.yaml.
"""

from __future__ import annotations

from typing import Any

import torch

from bilevel_bench.problem import BilevelProblem, Variables


class Task:
    def __init__(
        self, problem: BilevelProblem, cfg: Any, dataset_name: str, total_steps: int | None = None
    ):
        self.problem, self.cfg, self.dataset_name = problem, cfg, dataset_name
        # tasks counted in epochs pass total_steps = epochs * batches per epoch
        self.total_steps = int(cfg.task.iters) if total_steps is None else total_steps
        self.eval_every = int(cfg.task.eval_every)
        # evaluation draws its own batches so it never perturbs the training stream
        self.eval_generator = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003)

    def prepare(self, u: Variables, v: Variables) -> None:
        """Work before the first upper step (e.g. pre-training); counted in runtime_s.

        Not called again when a run resumes from a checkpoint: whatever it changes must live in
        u, v or `state_dict()`.
        """

    def after_step(self, step: int, u: Variables, v: Variables) -> None:
        """Hook after each upper step (e.g. per-epoch re-normalisation); counted in runtime_s."""

    def evaluate(self, u: Variables, v: Variables) -> dict[str, float]:
        """Metrics logged to curve.csv every task.eval_every steps and at the end."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State that changes during training, saved in checkpoints (tensors and plain numbers).

        Subclasses that keep more (running statistics, a data-order generator) extend this.
        """
        return {"eval_generator": self.eval_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of state_dict; tensors arrive on the CPU (move them where they live)."""
        self.eval_generator.set_state(state["eval_generator"])

    def final_metrics(self, u: Variables, v: Variables) -> dict[str, float]:
        """Extra, possibly expensive, metrics computed once at the end (not in runtime_s)."""
        return {}
