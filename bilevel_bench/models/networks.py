"""The authors' denoising networks (paper.md 3.2), built from a small config.

`logreg`: one linear layer on the flattened image. `cnn`: blocks of 3x3/5x5 convolutions (ReLU)
each followed by 2x2 max-pooling and dropout, then fully connected ReLU layers with dropout.
`padding` is a pattern applied within each block, e.g. [same, valid] for the Keras CIFAR model
(the first convolution of a block keeps the size, the second shrinks it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bilevel_bench.checks import ConfigError


def _cnn(cfg: Any, in_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    channels, layers = in_shape[0], []
    padding = list(cfg.padding)
    for block in cfg.blocks:
        for i, width in enumerate(block):
            pad = padding[i % len(padding)]
            layers += [nn.Conv2d(channels, int(width), int(cfg.kernel), padding=pad), nn.ReLU()]
            channels = int(width)
        layers += [nn.MaxPool2d(2), nn.Dropout(float(cfg.dropout_conv))]
    layers.append(nn.Flatten())
    with torch.no_grad():
        features = nn.Sequential(*layers)(torch.zeros(1, *in_shape)).shape[1]
    for width in cfg.hidden:
        layers += [nn.Linear(features, int(width)), nn.ReLU(), nn.Dropout(float(cfg.dropout_fc))]
        features = int(width)
    layers.append(nn.Linear(features, n_classes))
    return nn.Sequential(*layers)


def _logreg(cfg: Any, in_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), n_classes))


ARCHITECTURES = {"cnn": _cnn, "logreg": _logreg}


def build_model(
    cfg: Any, in_shape: tuple[int, ...], n_classes: int, verbose: bool = True
) -> nn.Module:
    """The network named by model.architecture; prints its parameter count when verbose."""
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(
            f"model.architecture={cfg.architecture!r} is unknown; use {' or '.join(ARCHITECTURES)}"
        )
    try:
        model = ARCHITECTURES[cfg.architecture](cfg, in_shape, n_classes)
    except RuntimeError as err:  # e.g. too many poolings for a small image
        raise ConfigError(
            f"model={cfg.name} does not fit inputs of shape {list(in_shape)}: {err}"
        ) from err
    count = sum(p.numel() for p in model.parameters())
    if verbose:
        print(
            f"model {cfg.name}: {count:,} parameters (input {list(in_shape)}, {n_classes} classes)"
        )
    return model
