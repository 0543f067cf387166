"""Frozen feature extractors for the clean-label attack: torchvision's ImageNet InceptionV3 up
to global average pooling (2048-D, as the authors' Keras model), or a small randomly initialised
conv net for tests and machines without the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import Inception_V3_Weights, inception_v3

from bilevel_bench.checks import ConfigError
from bilevel_bench.data.errors import DatasetError

FEATURES = ("inception_v3", "random_conv")


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (batch-norm running stats, no dropout) and no parameter gradients."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def inception_weights_path() -> Path:
    weights = Inception_V3_Weights.IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def inception_v3_features(download: bool) -> nn.Module:
    """InceptionV3 with the classifier removed. Inputs: [N, 3, H >= 75, W >= 75] in [-1, 1]
    (Keras' scaling, the dog-fish file's range), so torchvision's input transform is off."""
    path = inception_weights_path()
    if not path.is_file() and not download:
        raise DatasetError(
            f"InceptionV3 ImageNet weights not found at {path} and data.download=false; set "
            "data.download=true on a machine with internet access, or copy "
            f"{Inception_V3_Weights.IMAGENET1K_V1.url} there (TORCH_HOME moves the folder)"
        )
    try:
        model = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1, transform_input=False)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash a RuntimeError
        raise DatasetError(
            f"InceptionV3 ImageNet weights could not be loaded into {path}: {err}. Copy "
            f"{Inception_V3_Weights.IMAGENET1K_V1.url} there by hand"
        ) from err
    model.fc = nn.Identity()  # the 2048-D pooled features, dropout is inactive in eval mode
    model.aux_logits, model.AuxLogits = False, None
    return freeze(model)


def random_conv_features(in_channels: int, dim: int, seed: int) -> nn.Module:
    """Two conv layers + global average pooling, randomly initialised from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(in_channels, dim, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
    return freeze(model)


def build_features(name: str, in_channels: int, dim: int, seed: int, download: bool) -> nn.Module:
    if name == "inception_v3":
        return inception_v3_features(download)
    if name == "random_conv":
        return random_conv_features(in_channels, dim, seed)
    raise ConfigError(f"dataset.features={name!r} is not one of {', '.join(FEATURES)}")


@torch.no_grad()
def extract(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Features of many images in batches (no graph). The images may stay on the CPU: each batch
    moves to the model's device and dtype, so the full-size images never need device memory."""
    parameter = next(model.parameters())
    return torch.cat(
        [
            model(chunk.to(device=parameter.device, dtype=parameter.dtype))
            for chunk in images.split(batch_size)
        ]
    )
