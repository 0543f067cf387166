"""Train / validation splits of an official training set, seeded, without per-example loops."""

from __future__ import annotations

import torch


def split_train_val(
    labels: torch.Tensor,
    val_size: int,
    train_size: int | None,
    balanced: bool,
    n_classes: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices). `balanced` takes val_size / n_classes per class (SVHN);
    otherwise the validation set is a random subset. train_size=None keeps all the rest."""
    order = torch.randperm(len(labels), generator=generator)
    if balanced:
        per_class = val_size // n_classes
        shuffled = labels[order]
        # rank of each example within its class, in shuffled order
        sort = torch.sort(shuffled, stable=True)
        first = torch.searchsorted(sort.values, sort.values, side="left")
        rank = torch.empty_like(order)
        rank[sort.indices] = torch.arange(len(order)) - first
        in_val = rank < per_class
        val, rest = order[in_val], order[~in_val]
    else:
        val, rest = order[:val_size], order[val_size:]
    if len(val) < val_size:
        raise ValueError(f"only {len(val)} examples available for a validation set of {val_size}")
    train = rest if train_size is None else rest[:train_size]
    if train_size is not None and len(train) < train_size:
        raise ValueError(f"only {len(rest)} examples left for a training set of {train_size}")
    return train, val
