"""Label noise: a fixed fraction of labels changed to a *different* class drawn at random."""

from __future__ import annotations

import torch


def corrupt_labels(
    labels: torch.Tensor, fraction: float, n_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, is_noisy mask). Exactly round(fraction * N) labels change, never to their
    own class: adding an offset in 1..n_classes-1 modulo n_classes always moves to another one."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"noise fraction must be in [0, 1], got {fraction}")
    n = len(labels)
    chosen = torch.randperm(n, generator=generator)[: round(fraction * n)]
    offsets = torch.randint(1, n_classes, (len(chosen),), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + offsets) % n_classes
    is_noisy = torch.zeros(n, dtype=torch.bool)
    is_noisy[chosen] = True
    return noisy, is_noisy
