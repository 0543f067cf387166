"""Few-shot episodes drawn as index tensors into one uint8 image tensor on the data's device.

Every class holds the same number of examples, so a dataset split is one uint8 tensor
[classes, examples, channels, height, width], held once however many runs share it. Episodes
are a pure function of a key (bilevel_bench.keys), drawn with tensor operations on the device:
every task of a meta-batch has its own key, derived from the run's key and the task's number.
So run k of a batch draws the episodes the single run of its seed draws, and episode i of a
meta-test is the same however the episodes are split into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel_bench import keys
from bilevel_bench.checks import ConfigError

# sub-streams of a task's key
CLASSES_STREAM, EXAMPLES_STREAM = 1, 2


@dataclass
class LabelledImages:
    """images [..., tasks, n, channels, height, width] (float in [0, 1]), labels
    [..., tasks, n] in 0..ways-1."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class Episodes:
    support: LabelledImages
    query: LabelledImages
    #: [..., tasks, ways] dataset class of each way (lets tests check disjointness)
    classes: torch.Tensor
    #: [..., tasks] each task's key: what else is random about a task (its fresh head) derives
    #: from it
    task_keys: torch.Tensor


@dataclass
class FewShotSplits:
    """Meta-train and meta-test classes of one dataset, uint8 [classes, examples, c, h, w]."""

    name: str
    train: torch.Tensor
    test: torch.Tensor

    def to(self, device) -> FewShotSplits:
        return FewShotSplits(self.name, self.train.to(device), self.test.to(device))


def task_keys(key: torch.Tensor, n_tasks: int, first_task: int = 0) -> torch.Tensor:
    """key.shape + (n_tasks,): the keys of tasks first_task .. first_task + n_tasks - 1."""
    numbers = torch.arange(first_task, first_task + n_tasks, device=key.device)
    return keys.derive(key.unsqueeze(-1), numbers)


class EpisodeSampler:
    """N-way K-shot episodes with `queries` query images per class, disjoint from the shots."""

    def __init__(self, images: torch.Tensor, ways: int, shots: int, queries: int, split: str):
        n_classes, n_examples = images.shape[:2]
        if ways > n_classes:
            raise ConfigError(
                f"task.ways={ways} exceeds the {n_classes} {split} classes of this dataset; "
                f"use task.ways<={n_classes}"
            )
        if shots + queries > n_examples:
            raise ConfigError(
                f"task.shots + queries per class = {shots + queries} exceeds the {n_examples} examples "
                f"per class of the {split} split; lower task.shots or task.queries (task.eval_queries)"
            )
        self.images, self.ways, self.shots, self.queries = images, ways, shots, queries

    def sample(self, key: torch.Tensor, n_tasks: int, first_task: int = 0) -> Episodes:
        """Tasks first_task .. first_task + n_tasks - 1 of every key: key [...] (e.g. [K], one
        per run) gives episodes with leading dimensions [..., n_tasks]."""
        n_classes, n_examples = self.images.shape[:2]
        per_class = self.shots + self.queries
        tasks = task_keys(key, n_tasks, first_task)
        classes = keys.without_replacement(
            keys.derive(tasks, CLASSES_STREAM), (self.ways,), n_classes
        )
        examples = keys.without_replacement(
            keys.derive(tasks, EXAMPLES_STREAM), (self.ways, per_class), n_examples
        )
        # [..., tasks, ways, shots + queries, c, h, w] in one gather from the shared images
        picked = self.images[classes.unsqueeze(-1), examples]
        picked = picked.to(torch.get_default_dtype()) / 255.0
        ways = torch.arange(self.ways, device=self.images.device).unsqueeze(-1)

        def part(lo, hi):
            images = picked[..., lo:hi, :, :, :].flatten(-5, -4)  # way-major: labels 0, 0, 1, ...
            labels = ways.expand(self.ways, hi - lo).flatten().expand(*tasks.shape, -1)
            return LabelledImages(images, labels)

        return Episodes(part(0, self.shots), part(self.shots, per_class), classes, tasks)
