"""A small generated image dataset with learnable labels, for tests and quick runs.

Each class has a random prototype image; examples are prototype + Gaussian noise, so a linear
model or a CNN separates them well but not trivially. Shapes mimic the real datasets (HWC uint8).
"""

from __future__ import annotations

import torch


def make_fake(
    n_train: int, n_test: int, n_classes: int, size: int, channels: int, noise: float, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images uint8 [N, size, size, channels], labels), (test images, labels))."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(n_classes, size, size, channels, generator=generator)

    def draw(n):
        labels = torch.randint(n_classes, (n,), generator=generator)
        pixels = prototypes[labels] + noise * torch.randn(
            n, size, size, channels, generator=generator
        )
        return (pixels.clamp(0, 1) * 255).round().to(torch.uint8), labels

    return draw(n_train), draw(n_test)
