"""SVHN cropped digits from torchvision's on-disk layout: <root>/svhn/{train,test}_32x32.mat.

The .mat files are read with scipy (as torchvision does, but without its md5 check); torchvision
is only used to download them. Label 10 in the files means digit 0.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from bilevel_bench.data.errors import DatasetError, download_or_explain

FOLDER = "svhn"
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
HINT = (
    f"expected {FOLDER}/train_32x32.mat and {FOLDER}/test_32x32.mat (cropped digits, format 2, "
    "from http://ufldl.stanford.edu/housenumbers/); set data.root to the folder that contains "
    f"{FOLDER}/, or keep data.download=true with internet access"
)


def load_svhn(root: str | Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N] in 0..9) of the official split."""
    import scipy.io

    folder = Path(root).expanduser() / FOLDER
    path = folder / FILES[split]
    if not path.is_file():
        from torchvision.datasets import SVHN

        fetch = partial(SVHN, str(folder), split=split, download=True)
        download_or_explain("SVHN", f"{path} is missing", folder, download, fetch, HINT)
    try:
        content = scipy.io.loadmat(str(path))
        images = np.asarray(content["X"], dtype=np.uint8).transpose(3, 0, 1, 2)  # HWCN -> NHWC
        labels = np.asarray(content["y"], dtype=np.int64).reshape(-1)
    except Exception as err:
        raise DatasetError(
            f"SVHN: {path} is corrupt or not an SVHN .mat file ({err}); {HINT}"
        ) from err
    if images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise DatasetError(
            f"SVHN: {path} holds X of shape {images.shape} and {len(labels)} labels, "
            f"expected [32, 32, 3, N] and N labels; {HINT}"
        )
    labels = np.where(labels == 10, 0, labels)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)
