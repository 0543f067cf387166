"""Few-shot episodes sampled as whole tensors on the data's device.

Every class holds the same number of examples, so a dataset split is one uint8 tensor
[classes, examples, channels, height, width]. Random numbers come from the CPU generator the
runner passes (reproducible on any device); only the small index tensors travel to the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel_bench.checks import ConfigError


@dataclass
class LabelledImages:
    """images [tasks, n, channels, height, width] (float in [0, 1]), labels [tasks, n] in 0..ways-1."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class Episodes:
    support: LabelledImages
    query: LabelledImages
    #: [tasks, ways] dataset class of each way (lets tests check disjointness)
    classes: torch.Tensor


@dataclass
class FewShotSplits:
    """Meta-train and meta-test classes of one dataset, uint8 [classes, examples, c, h, w]."""

    name: str
    train: torch.Tensor
    test: torch.Tensor

    def to(self, device) -> FewShotSplits:
        return FewShotSplits(self.name, self.train.to(device), self.test.to(device))


def _draw_without_replacement(rows: int, population: int, k: int, generator) -> torch.Tensor:
    """[rows, k] distinct indices in [0, population) per row: argsort of uniform noise."""
    return torch.rand(rows, population, generator=generator).argsort(dim=1)[:, :k]


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

    def sample(self, n_tasks: int, generator: torch.Generator) -> Episodes:
        n_classes, n_examples = self.images.shape[:2]
        per_class = self.shots + self.queries
        device = self.images.device
        classes = _draw_without_replacement(n_tasks, n_classes, self.ways, generator)
        examples = _draw_without_replacement(n_tasks * self.ways, n_examples, per_class, generator)
        examples = examples.view(n_tasks, self.ways, per_class)
        classes, examples = classes.to(device), examples.to(device)
        # [tasks, ways, shots + queries, c, h, w] in one gather
        picked = self.images[classes[:, :, None], examples]
        picked = picked.to(torch.get_default_dtype()) / 255.0
        labels = torch.arange(self.ways, device=device).view(1, self.ways, 1)

        def part(lo, hi):
            chunk = picked[:, :, lo:hi].flatten(1, 2)
            return LabelledImages(chunk, labels.expand(n_tasks, -1, hi - lo).flatten(1))

        return Episodes(part(0, self.shots), part(self.shots, per_class), classes)
