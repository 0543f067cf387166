"""The authors' few-shot encoders (paper section 3.3) and the batched cosine-similarity head.

BatchNorm always normalises with the statistics of the batch it sees (track_running_stats=False):
the authors never ran TF's moving-average update ops, so their BN used batch statistics in
training and at meta-test alike.

A convolution followed by BatchNorm has no bias: the mean subtraction cancels it, so its exact
gradient is zero and the computed one is rounding noise, which Adam (normalising by the
gradient's size) would turn into steps of up to lr: a random walk that changes nothing the
network computes but makes runs differ in their parameters.
"""

from __future__ import annotations

import torch
from torch import nn


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


def _conv_before_batch_norm(in_channels: int, channels: int, size: int) -> nn.Conv2d:
    """A `size` x `size` convolution (padded to keep the image size) whose bias BN would cancel."""
    return nn.Conv2d(in_channels, channels, size, padding=size // 2, bias=False)


class Conv4(nn.Module):
    """4 x [conv 3x3 -> BN -> ReLU (not after the 4th) -> max-pool 2]; 28x28 -> 64 x 1 x 1."""

    def __init__(self, in_channels: int = 1, channels: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(4):
            layers += [
                _conv_before_batch_norm(in_channels if index == 0 else channels, channels, 3),
                _batch_norm(channels),
            ]
            if index < 3:
                layers.append(nn.ReLU())
            layers.append(nn.MaxPool2d(2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x).flatten(1)


class ResidualBlock(nn.Module):
    """3 x [conv 3x3 -> BN -> leaky ReLU 0.1] plus a 1x1 convolution skip, then max-pool 2.

    Pooling rounds up (TF 'SAME'), so 84 -> 42 -> 21 -> 11 -> 6 as in the authors' encoder.
    """

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        convs: list[nn.Module] = []
        for index in range(3):
            convs += [
                _conv_before_batch_norm(in_channels if index == 0 else channels, channels, 3),
                _batch_norm(channels),
                nn.LeakyReLU(0.1),
            ]
        self.body = nn.Sequential(*convs)
        self.skip = nn.Conv2d(in_channels, channels, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.body(x) + self.skip(x))


class ResNetMini(nn.Module):
    """The authors' Mini-ImageNet encoder: residual blocks of 64/96/128/256 channels, a 1x1
    convolution to 2048, global average pooling (their 6x6 average pool at 84x84), and a 1x1
    convolution to 384 features."""

    def __init__(self, in_channels: int = 3, widths=(64, 96, 128, 256), hidden=2048, out=384):
        super().__init__()
        blocks, previous = [], in_channels
        for width in widths:
            blocks.append(ResidualBlock(previous, width))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            _conv_before_batch_norm(previous, hidden, 1),
            _batch_norm(hidden),
            nn.LeakyReLU(0.1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(hidden, out, 1),
        )

    def forward(self, x):
        return self.head(self.blocks(x)).flatten(1)


ENCODERS = {"conv4": Conv4, "resnet_mini": ResNetMini}


def cosine_logits(features, weight, bias, scale: float, bias_scale: float = 0.001):
    """The authors' cosine-similarity head, for all runs and tasks at once.

    logits = scale * (x.W + bias_scale * b) / (|[x, bias_scale]| * |[W_col, b]|)
    features [..., n, dim], weight [..., dim, ways], bias [..., ways] -> [..., n, ways], the
    leading dimensions (runs, tasks) matching.
    """
    numerator = torch.matmul(features, weight) + bias_scale * bias.unsqueeze(-2)
    feature_norm = ((features**2).sum(-1, keepdim=True) + bias_scale**2).sqrt()
    weight_norm = ((weight**2).sum(-2) + bias**2).sqrt().unsqueeze(-2)
    return scale * numerator / (feature_norm * weight_norm)
