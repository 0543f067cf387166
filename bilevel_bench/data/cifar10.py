"""CIFAR-10 from torchvision's on-disk layout: <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}.

The python pickles are read directly (torchvision's class insists on md5 matches, which makes
it unusable on copies or test files); torchvision is only used to download when they are missing.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bilevel_bench.data.errors import DatasetError, download_or_explain

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
HINT = (
    f"expected {FOLDER}/ with {', '.join(TRAIN_FILES + TEST_FILES)} (the python version, "
    "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted); "
    "set data.root to the folder that contains it, or keep data.download=true with internet access"
)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except Exception as err:  # unpickling garbage raises many different types
        raise DatasetError(
            f"CIFAR-10: {path} is corrupt or not a CIFAR batch ({err}); {HINT}"
        ) from err
    if len(images) != len(labels):
        raise DatasetError(
            f"CIFAR-10: {path} has {len(images)} images but {len(labels)} labels; {HINT}"
        )
    return images, labels


def load_cifar10(
    root: str | Path, train: bool, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of the official train or test split."""
    root = Path(root).expanduser()
    folder = root / FOLDER
    names = TRAIN_FILES if train else TEST_FILES
    if not all((folder / name).is_file() for name in names):
        from torchvision.datasets import CIFAR10

        fetch = partial(CIFAR10, str(root), train=train, download=True)
        download_or_explain(
            "CIFAR-10", f"no complete copy under {folder}", root, download, fetch, HINT
        )
    parts = [_read_batch(folder / name) for name in names]
    images = np.concatenate([p[0] for p in parts]).transpose(0, 2, 3, 1)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)
