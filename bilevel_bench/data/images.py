"""Image classification data for the denoising task: official train/test sets of a named dataset,
the authors' train/validation split, as float tensors on the device (N, C, H, W in [0, 1])."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bilevel_bench.checks import ConfigError, names
from bilevel_bench.data.cifar10 import load_cifar10
from bilevel_bench.data.fake import make_fake
from bilevel_bench.data.mnist import load_mnist
from bilevel_bench.data.splits import split_train_val
from bilevel_bench.data.svhn import load_svhn


@dataclass
class ImageSets:
    """One copy of the official training and test images, and each run's train/val split.

    images / labels: the official training set (N, C, H, W floats in [0, 1]); train_index and
    val_index: [K, n_train] / [K, n_val] rows of it, one split per run (seed)."""

    images: torch.Tensor
    labels: torch.Tensor
    train_index: torch.Tensor
    val_index: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])


def _official(cfg: Any, root: str, download: bool):
    """((train images, labels), (test images, labels)) as uint8 NHWC / NHW and int64."""
    name = cfg.name
    if name == "mnist":
        return load_mnist(root, True, download), load_mnist(root, False, download)
    if name == "cifar10":
        return load_cifar10(root, True, download), load_cifar10(root, False, download)
    if name == "svhn":
        return load_svhn(root, "train", download), load_svhn(root, "test", download)
    if name == "fake":
        return make_fake(
            int(cfg.n_train), int(cfg.n_test), int(cfg.n_classes), int(cfg.size),
            int(cfg.channels), float(cfg.pixel_noise), int(cfg.seed),
        )  # fmt: skip
    raise ConfigError(f"dataset={name} is not an image dataset; choose one of {names(LOADERS)}")


LOADERS = ("mnist", "cifar10", "svhn", "fake")


def _to_float(images: torch.Tensor, greyscale: bool) -> torch.Tensor:
    x = images.to(torch.get_default_dtype()) / 255.0
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # -> N, C, H, W
    if greyscale and x.shape[1] == 3:  # ITU-R 601 luma, as the authors' SVHN pre-processing
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.contiguous()


def load_image_sets(
    cfg: Any, root: str, download: bool, generators: list[torch.Generator], device: torch.device
) -> ImageSets:
    """Official splits, then each run's seeded train/validation split of the training set."""
    (train_images, train_labels), (test_images, test_labels) = _official(cfg, root, download)
    n_classes = int(cfg.n_classes)
    train_size = cfg.get("train_size")
    splits = []
    for generator in generators:
        try:
            splits.append(
                split_train_val(
                    train_labels,
                    int(cfg.val_size),
                    None if train_size is None else int(train_size),
                    bool(cfg.get("balanced_val", False)),
                    n_classes,
                    generator,
                )
            )
        except ValueError as err:
            raise ConfigError(
                f"dataset.val_size / dataset.train_size for {cfg.name}: {err}"
            ) from err
    greyscale = bool(cfg.get("greyscale", False))
    return ImageSets(
        images=_to_float(train_images, greyscale).to(device),
        labels=train_labels.to(device),
        train_index=torch.stack([train for train, _ in splits]).to(device),
        val_index=torch.stack([val for _, val in splits]).to(device),
        test_x=_to_float(test_images, greyscale).to(device),
        test_y=test_labels.to(device),
        n_classes=n_classes,
    )
