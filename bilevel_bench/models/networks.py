"""The authors' denoising networks (paper section 3.2), built from a small config.

`logreg`: one linear layer on the flattened image. `cnn`: blocks of 3x3/5x5 convolutions (ReLU)
each followed by 2x2 max-pooling and dropout, then fully connected ReLU layers with dropout.
`padding` is a pattern applied within each block, e.g. [same, valid] for the Keras CIFAR model
(the first convolution of a block keeps the size, the second shrinks it).

Dropout draws its masks from a key (bilevel_bench.keys), passed as `network(x, key)`: a run's
masks are then the same whether it trains alone or in a batch of runs, and a resumed run draws
the masks it would have drawn. Without a key (evaluation) there is no dropout.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from bilevel_bench import keys
from bilevel_bench.checks import ConfigError


class DropoutMasks:
    """The dropout masks of one minibatch of every run ([K] keys), drawn once when the batch is
    drawn: every forward pass over that batch within an upper step (all T lower steps) sees the
    same masks, the hashing is paid once, and no mask is made inside a torch.func transform
    (FMD's jvp), from which it could not be reused."""

    def __init__(self, key: torch.Tensor, network: nn.Module, batch_shape: tuple[int, ...]):
        """batch_shape: one run's input, (B, C, H, W)."""
        self.key = key
        self._kept = {
            layer.layer: keys.keep_mask(keys.derive(key, layer.layer), shape, 1 - layer.p)
            for layer, shape in _dropout_shapes(network, batch_shape)
        }

    def kept(self, layer: int) -> torch.Tensor:
        """[K, B, ...] bool: the units each run keeps in this layer."""
        return self._kept[layer]


def _dropout_shapes(network: nn.Module, batch_shape):
    """(KeyedDropout layer, the shape of one run's activations there) for each such layer."""
    per_example = _per_example_dropout_shapes(network, tuple(batch_shape[1:]))
    return [(layer, (batch_shape[0], *shape)) for layer, shape in per_example]


_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _per_example_dropout_shapes(network: nn.Module, input_shape: tuple[int, ...]):
    """Found once per network and input shape by a forward pass of one example on the
    network's own device (not at every minibatch)."""
    known = _SHAPES.setdefault(network, {})
    if input_shape not in known:
        found = []
        if isinstance(network, nn.Sequential):
            first = next(network.parameters())
            with torch.no_grad():
                x = torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype)
                for layer in network:
                    if isinstance(layer, KeyedDropout):
                        if layer.p > 0:
                            found.append((layer, tuple(x.shape[1:])))
                    else:
                        x = layer(x)
        known[input_shape] = found
    return known[input_shape]


class KeyedDropout(nn.Module):
    """Dropout with masks hashed from (key, layer, element): no torch random generator."""

    def __init__(self, p: float, layer: int):
        super().__init__()
        self.p, self.layer = p, layer

    def forward(self, x: torch.Tensor, key: torch.Tensor | None) -> torch.Tensor:
        if key is None or self.p == 0:
            return x
        kept = keys.keep_mask(keys.derive(key, self.layer), tuple(x.shape), 1 - self.p)
        return x * kept.to(x.dtype) / (1 - self.p)


class Network(nn.Sequential):
    """nn.Sequential whose dropout layers take the key given to forward."""

    def forward(self, x: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, key) if isinstance(layer, KeyedDropout) else layer(x)
        return x


def _cnn(cfg: Any, in_shape: tuple[int, ...], n_classes: int) -> Network:
    channels, layers = in_shape[0], []
    padding = list(cfg.padding)
    for block in cfg.blocks:
        for i, width in enumerate(block):
            pad = padding[i % len(padding)]
            layers += [nn.Conv2d(channels, int(width), int(cfg.kernel), padding=pad), nn.ReLU()]
            channels = int(width)
        # max-pool before the block's last ReLU: relu(max(x)) = max(relu(x)), value and gradient,
        # and the ReLU (forward and both backward passes) then touches 4x fewer numbers
        layers[-1:] = [nn.MaxPool2d(2), nn.ReLU()]
        layers.append(KeyedDropout(float(cfg.dropout_conv), len(layers)))
    layers.append(nn.Flatten())
    with torch.no_grad():
        features = Network(*layers)(torch.zeros(1, *in_shape)).shape[1]
    for width in cfg.hidden:
        layers += [nn.Linear(features, int(width)), nn.ReLU()]
        layers.append(KeyedDropout(float(cfg.dropout_fc), len(layers)))
        features = int(width)
    layers.append(nn.Linear(features, n_classes))
    return Network(*layers)


def _logreg(cfg: Any, in_shape: tuple[int, ...], n_classes: int) -> Network:
    return Network(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), n_classes))


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
