"""What the runner needs from a task: a (batched) problem, a step budget and an evaluation.

A task module of this package exposes `build(cfg, device, seeds) -> Task` (it is discovered by
its module name) and has a configs/task/NAME.yaml. `seeds` are the runs computed together; the
task builds one problem for all of them, with what the seed changes in the data (splits, label
noise, poison starts, episodes) held per run as indices or labels over one copy of the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bilevel_bench import keys
from bilevel_bench.problem import BilevelProblem, Variables, batched

# evaluation draws from its own stream, so it never perturbs training
EVAL_STREAM = 1_000_003


class Task:
    def __init__(
        self,
        problem: BilevelProblem,
        cfg: Any,
        dataset_name: str,
        seeds: list[int],
        device: torch.device,
        total_steps: int | None = None,
    ):
        self.problem = batched(problem)
        self.cfg, self.dataset_name, self.seeds, self.device = cfg, dataset_name, seeds, device
        # tasks counted in epochs pass total_steps = epochs * batches per epoch
        self.total_steps = int(cfg.task.iters) if total_steps is None else total_steps
        self.eval_every = int(cfg.task.eval_every)
        #: identifying columns of the rows beyond task/dataset/solver (e.g. {"baseline": ...})
        self.labels: dict[str, str] = {}
        self.eval_stream = {
            "key": keys.derive(keys.run_keys(seeds, device), EVAL_STREAM),
            "step": torch.zeros(len(seeds), dtype=torch.int64, device=device),
        }

    @property
    def runs(self) -> int:
        return len(self.seeds)

    def prepare(self, u: Variables, v: Variables) -> tuple[Variables, Variables]:
        """Work before the first upper step (e.g. pre-training); counted in runtime_s. Returns
        the variables to start from. Not called again when a run resumes from a checkpoint."""
        return u, v

    def evaluate(self, u: Variables, v: Variables) -> list[dict[str, float]]:
        """Metrics of every run, logged to curve.csv every task.eval_every steps and at the end."""
        raise NotImplementedError

    def final_metrics(
        self, u: Variables, v: Variables, runs: list[int], run_dirs: list[Path]
    ) -> dict[int, dict[str, float]]:
        """Extra, possibly expensive, metrics computed once at the end (not in runtime_s), for
        the runs listed (indices into the batch); files they make go to run_dirs[run]."""
        return {}
