"""Data for the poisoning attacks (paper section 3.4): the authors' MNIST splits, initial poisons,
a generated digit-like stand-in for tests, and Koh & Liang's dog-fish npz (read and generated).

Digit images are float32 tensors in [0, 1] flattened to [N, pixels]; the official train and test
pools are stacked into one tensor, and a run's split, poisons and label flips are row indices into
it (with labels), so that K runs share one copy of the images. Dog-fish images stay
[N, 3, H, W] in the file's own range (Keras' InceptionV3 scaling, [-1, 1]).
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
    """A digit dataset's official train pool (rows [0, train_size)) and test pool (the rest),
    stacked: images [N, pixels] in [0, 1], labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    train_size: int
    image_shape: tuple[int, int, int]
    num_classes: int = 10

    @property
    def test_size(self) -> int:
        return len(self.labels) - self.train_size


@dataclass
class Split:
    """One run's sets as rows of the pools: train (lower level), upper set (f), test (evaluation),
    and the labels f uses for the upper set (the targeted attack relabels it)."""

    train: torch.Tensor
    upper: torch.Tensor
    upper_labels: torch.Tensor
    test: torch.Tensor


def _stacked(train_x, train_y, test_x, test_y, image_shape, num_classes=10) -> DigitPools:
    return DigitPools(
        torch.cat([train_x, test_x]),
        torch.cat([train_y, test_y]),
        len(train_y),
        image_shape,
        num_classes,
    )


def mnist_pools(root, download: bool) -> DigitPools:
    train_x, train_y = load_mnist(root, train=True, download=download)
    test_x, test_y = load_mnist(root, train=False, download=download)

    def flat(images):
        return images.reshape(len(images), -1).float() / 255.0

    return _stacked(flat(train_x), train_y, flat(test_x), test_y, (1, 28, 28))


def fake_digit_pools(
    side: int, train_size: int, test_size: int, noise: float, seed: int, num_classes: int = 10
) -> DigitPools:
    """Generated MNIST-like pools: one random prototype per class plus pixel noise, in [0, 1].

    The noise makes classes overlap, so a linear model is good but not perfect and poisons can
    hurt it. A fixed `seed` keeps the data identical across runs (the run seed shuffles it), and
    float32 draws keep it identical whatever the computation's dtype (as MNIST's pixels are).
    """
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, side * side, generator=gen, dtype=torch.float32)

    def draw(n):
        labels = torch.randint(num_classes, (n,), generator=gen)
        noisy = prototypes[labels] + noise * torch.randn(
            n, side * side, generator=gen, dtype=torch.float32
        )
        return noisy.clamp(0, 1), labels

    train_x, train_y = draw(train_size)
    test_x, test_y = draw(test_size)
    return _stacked(train_x, train_y, test_x, test_y, (1, side, side), num_classes)


def _check_size(name: str, needed: int, available: int) -> None:
    if needed > available:
        raise DatasetError(
            f"the poisoning split needs {needed} images from the {name} pool but it has "
            f"{available}; lower task.split.* or use a larger dataset"
        )


def untargeted_split(pools: DigitPools, sizes, generator: torch.Generator) -> Split:
    """The authors' split: shuffle the train pool, then train / val / test slices of it."""
    n_train, n_val, n_test = int(sizes.train), int(sizes.val), int(sizes.test)
    _check_size("train", n_train + n_val + n_test, pools.train_size)
    order = torch.randperm(pools.train_size, generator=generator)
    train, upper, test = torch.split(order[: n_train + n_val + n_test], [n_train, n_val, n_test])
    return Split(train, upper, pools.labels[upper], test)


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
    `source` images of a balanced val set from the rest of the train pool, relabelled `target`;
    test = a balanced set of the test pool with true labels (the attack's success is measured on
    its `source` images). Every run's upper set has val // num_classes images."""
    n_train, n_val, n_test = int(sizes.train), int(sizes.val), int(sizes.test)
    k = pools.num_classes
    head = 2 * n_train
    train_labels = pools.labels[: pools.train_size]
    train = balanced_indices(train_labels[:head], n_train, k, generator)
    val = head + balanced_indices(train_labels[head:], n_val, k, generator)
    upper = val[pools.labels[val] == source]
    test_labels = pools.labels[pools.train_size :]
    test = pools.train_size + balanced_indices(test_labels, n_test, k, generator)
    return Split(train, upper, torch.full((len(upper),), target, dtype=torch.long), test)


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator) -> torch.Tensor:
    """A uniformly random label different from each given one."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


def label_flip_poisons(y, n: int, num_classes: int, generator):
    """n random training points (without replacement) with random wrong labels: (their
    positions in y, the new labels)."""
    _check_size("training", n, len(y))
    positions = torch.randperm(len(y), generator=generator)[:n]
    return positions, random_wrong_labels(y[positions], num_classes, generator)


def swap_poisons(y, n: int, source: int, target: int, generator):
    """Authors' targeted initial poisons: n/2 `target` images labelled `source` and n - n/2
    `source` images labelled `target`, in random order: (their positions in y, the labels)."""
    parts_positions, parts_labels = [], []
    for cls, count, new_label in ((target, n // 2, source), (source, n - n // 2, target)):
        members = torch.nonzero(y == cls).flatten()
        _check_size(f"class-{cls} training", count, len(members))
        parts_positions.append(members[torch.randperm(len(members), generator=generator)[:count]])
        parts_labels.append(torch.full((count,), new_label, dtype=torch.long))
    order = torch.randperm(n, generator=generator)
    return torch.cat(parts_positions)[order], torch.cat(parts_labels)[order]


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
