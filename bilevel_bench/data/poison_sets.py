"""Data for the poisoning attacks (paper.md 3.4): the authors' MNIST splits, initial poisons,
a generated digit-like stand-in for tests, and Koh & Liang's dog-fish npz (read and generated).

Images are float tensors in [0, 1] flattened to [N, pixels] for the linear attacks; dog-fish
images stay [N, 3, H, W] in the file's own range (Keras' InceptionV3 scaling, [-1, 1]).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bilevel_bench.data.errors import DatasetError
from bilevel_bench.data.mnist import load_mnist

DOGFISH_KEYS = ("X_train", "Y_train", "X_test", "Y_test")
DOGFISH_HINT = (
    "get Koh & Liang's dataset_dog-fish_train-900_test-300.npz (Codalab worksheet of 'Understanding "
    "Black-box Predictions via Influence Functions') and set dataset.path to it, or put it under "
    "data.root/dogfish/"
)


@dataclass
class DigitPools:
    """The official train and test pools of a digit dataset, flattened to [N, pixels] in [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, int, int]
    num_classes: int = 10


@dataclass
class Split:
    """Train (lower level), upper set (f), test (evaluation). y_upper may be relabelled."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_upper: torch.Tensor
    y_upper: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def mnist_pools(root, download: bool) -> DigitPools:
    train_x, train_y = load_mnist(root, train=True, download=download)
    test_x, test_y = load_mnist(root, train=False, download=download)

    def flat(images):
        return images.reshape(len(images), -1).float() / 255.0

    return DigitPools(flat(train_x), train_y, flat(test_x), test_y, (1, 28, 28))


def fake_digit_pools(
    side: int, train_size: int, test_size: int, noise: float, seed: int, num_classes: int = 10
) -> DigitPools:
    """Generated MNIST-like pools: one random prototype per class plus pixel noise, in [0, 1].

    The noise makes classes overlap, so a linear model is good but not perfect and poisons can
    hurt it. A fixed `seed` keeps the data identical across runs (the run seed shuffles it).
    """
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, side * side, generator=gen)

    def draw(n):
        labels = torch.randint(num_classes, (n,), generator=gen)
        images = prototypes[labels] + noise * torch.randn(n, side * side, generator=gen)
        return images.clamp(0, 1), labels

    train_x, train_y = draw(train_size)
    test_x, test_y = draw(test_size)
    return DigitPools(train_x, train_y, test_x, test_y, (1, side, side), num_classes)


def _check_size(name: str, needed: int, available: int) -> None:
    if needed > available:
        raise DatasetError(
            f"the poisoning split needs {needed} images from the {name} pool but it has "
            f"{available}; lower task.split.* or use a larger dataset"
        )


def untargeted_split(pools: DigitPools, sizes, generator: torch.Generator) -> Split:
    """The authors' split: shuffle the train pool, then train / val / test slices of it."""
    n_train, n_val, n_test = int(sizes.train), int(sizes.val), int(sizes.test)
    _check_size("train", n_train + n_val + n_test, len(pools.train_y))
    order = torch.randperm(len(pools.train_y), generator=generator)
    parts = torch.split(order[: n_train + n_val + n_test], [n_train, n_val, n_test])
    x, y = pools.train_x, pools.train_y
    return Split(*(t for idx in parts for t in (x[idx], y[idx])))


def balanced_indices(
    labels: torch.Tensor, total: int, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """total // num_classes random indices per class, shuffled (the authors' get_balanced_set)."""
    per_class = total // num_classes
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        _check_size(f"class-{c}", per_class, len(members))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    chosen = torch.cat(chosen)
    return chosen[torch.randperm(len(chosen), generator=generator)]


def targeted_split(pools: DigitPools, sizes, source: int, target: int, generator) -> Split:
    """Authors' 8 -> 3 sets: balanced train from the first 2 * train images; upper set = the
    `source` images of a balanced val set from the rest, relabelled `target`; test = the balanced
    test set with true labels (the attack's success is measured on its `source` images)."""
    n_train, n_val, n_test = int(sizes.train), int(sizes.val), int(sizes.test)
    k = pools.num_classes
    head = slice(0, 2 * n_train)
    train_idx = balanced_indices(pools.train_y[head], n_train, k, generator)
    rest_x, rest_y = pools.train_x[2 * n_train :], pools.train_y[2 * n_train :]
    val_idx = balanced_indices(rest_y, n_val, k, generator)
    val_idx = val_idx[rest_y[val_idx] == source]
    test_idx = balanced_indices(pools.test_y, n_test, k, generator)
    return Split(
        pools.train_x[head][train_idx],
        pools.train_y[head][train_idx],
        rest_x[val_idx],
        torch.full((len(val_idx),), target, dtype=torch.long),
        pools.test_x[test_idx],
        pools.test_y[test_idx],
    )


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator) -> torch.Tensor:
    """A uniformly random label different from each given one."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


def label_flip_poisons(x, y, n: int, num_classes: int, generator):
    """n random training points (without replacement) with random wrong labels."""
    _check_size("training", n, len(y))
    idx = torch.randperm(len(y), generator=generator)[:n]
    return x[idx].clone(), random_wrong_labels(y[idx], num_classes, generator)


def swap_poisons(x, y, n: int, source: int, target: int, generator):
    """Authors' targeted initial poisons: n/2 `target` images labelled `source` and n - n/2
    `source` images labelled `target`, in random order."""
    parts_x, parts_y = [], []
    for cls, count, new_label in ((target, n // 2, source), (source, n - n // 2, target)):
        members = torch.nonzero(y == cls).flatten()
        _check_size(f"class-{cls} training", count, len(members))
        parts_x.append(x[members[torch.randperm(len(members), generator=generator)[:count]]])
        parts_y.append(torch.full((count,), new_label, dtype=torch.long))
    order = torch.randperm(n, generator=generator)
    return torch.cat(parts_x)[order].clone(), torch.cat(parts_y)[order]


# --- dog-fish (clean-label attack) -----------------------------------------------------------


@dataclass
class DogFish:
    """Images [N, 3, H, W] in the file's range, labels int64 (0 = dog, 1 = fish in K&L's file)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_dogfish(path) -> DogFish:
    """Read Koh & Liang's npz (X_* as [N, H, W, 3] floats, Y_* as class indices)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"dog-fish: no file at {path}; {DOGFISH_HINT}")
    try:
        with np.load(path) as archive:
            missing = [k for k in DOGFISH_KEYS if k not in archive.files]
            if missing:
                raise DatasetError(
                    f"dog-fish: {path} lacks arrays {missing} (has {archive.files}); expected "
                    f"{', '.join(DOGFISH_KEYS)}. {DOGFISH_HINT}"
                )
            arrays = {k: archive[k] for k in DOGFISH_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(
            f"dog-fish: {path} is not a readable npz ({err}); {DOGFISH_HINT}"
        ) from err
    for split in ("train", "test"):
        images = arrays[f"X_{split}"]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DatasetError(
                f"dog-fish: X_{split} in {path} has shape {images.shape}; expected "
                f"[N, height, width, 3]. {DOGFISH_HINT}"
            )
    to_images = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(  # noqa: E731
        0, 3, 1, 2
    )
    to_labels = lambda a: torch.from_numpy(np.asarray(a).reshape(-1).astype(np.int64))  # noqa: E731
    return DogFish(
        to_images(arrays["X_train"]),
        to_labels(arrays["Y_train"]),
        to_images(arrays["X_test"]),
        to_labels(arrays["Y_test"]),
    )


def write_fake_dogfish(
    path, side: int = 16, train_per_class: int = 20, test_per_class: int = 10, seed: int = 0
) -> Path:
    """A tiny npz in Koh & Liang's format: two classes of noisy colour blobs in [-1, 1]."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(-0.6, 0.6, size=(2, side, side, 3))

    def draw(per_class):
        labels = np.repeat(np.arange(2), per_class)
        images = prototypes[labels] + 0.5 * rng.standard_normal((len(labels), side, side, 3))
        order = rng.permutation(len(labels))
        return np.clip(images[order], -1, 1).astype(np.float32), labels[order]

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    path = Path(path)
    np.savez(path, X_train=x_train, Y_train=y_train, X_test=x_test, Y_test=y_test)
    return path
