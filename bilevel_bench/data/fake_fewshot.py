"""A small learnable few-shot dataset for tests: each class is a random sparse pattern, its
examples are that pattern plus pixel noise, so a shared encoder can beat chance quickly."""

from __future__ import annotations

import torch

from bilevel_bench.data.episodes import FewShotSplits


def make(n_classes: int, examples: int, channels: int, size: int, noise: float, generator):
    patterns = (torch.rand(n_classes, 1, channels, size, size, generator=generator) < 0.3).float()
    jitter = noise * torch.randn(n_classes, examples, channels, size, size, generator=generator)
    return ((patterns + jitter).clamp(0, 1) * 255).round().to(torch.uint8)


def load(dataset_cfg, data_cfg) -> FewShotSplits:
    generator = torch.Generator().manual_seed(int(dataset_cfg.seed))
    shape = (
        int(dataset_cfg.examples_per_class),
        int(dataset_cfg.channels),
        int(dataset_cfg.image_size),
        float(dataset_cfg.noise),
    )
    train = make(int(dataset_cfg.train_classes), *shape, generator)
    test = make(int(dataset_cfg.test_classes), *shape, generator)
    return FewShotSplits("fake_fewshot", train, test)
