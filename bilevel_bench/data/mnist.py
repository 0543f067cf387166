"""MNIST through torchvision, also from a read-only folder holding only the original .gz files.

torchvision reads the *ungzipped* IDX files in <root>/MNIST/raw when download=False. A folder
with only the .gz files (as in ../shared/data) is md5-checked and unpacked into a cache folder;
the source folder is never written to.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock
from torchvision.datasets import MNIST

from bilevel_bench.data.errors import DatasetError

GZ_FILES = {
    filename: md5
    for filename, md5 in MNIST.resources  # (name.gz, md5) pairs
}
SOURCE_HINT = (
    "set data.root to a folder containing MNIST/raw/ with the four files "
    + ", ".join(GZ_FILES)
    + " (gzipped or not), or keep data.download=true on a machine with internet access"
)


def cache_root() -> Path:
    return Path(os.environ.get("BILEVEL_BENCH_CACHE", Path.home() / ".cache" / "bilevel-bench"))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _has_raw(root: Path, suffix: str) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / (name[: -len(".gz")] + suffix)).is_file() for name in GZ_FILES)


def _unpack_to_cache(source_root: Path) -> Path:
    """md5-check the .gz files and gunzip them into the cache; returns the cache root.

    Concurrent runs (JOBS>1 in scripts/reproduce_denoise.sh, Hydra multirun) share the cache: one
    unpacks under a file lock while the others wait, then find the files done.
    """
    target = cache_root() / "mnist"
    raw_out = target / "MNIST" / "raw"
    if _has_raw(target, ""):
        return target
    raw_out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(raw_out / ".unpack.lock")):
        if _has_raw(target, ""):  # another process unpacked while this one waited
            return target
        for name, md5 in GZ_FILES.items():
            source = source_root / "MNIST" / "raw" / name
            if _md5(source) != md5:
                raise DatasetError(
                    f"MNIST: {source} is corrupt (md5 differs from torchvision's {md5}); "
                    f"replace it with the original file. {SOURCE_HINT}"
                )
            destination = raw_out / name[: -len(".gz")]
            partial = destination.with_suffix(".partial")
            with gzip.open(source, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, destination)  # a crash never leaves a half-written IDX file
    return target


def load_mnist(root: str | Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the official train or test split."""
    root = Path(root).expanduser()
    if _has_raw(root, ""):
        dataset_root = root
    elif _has_raw(root, ".gz"):
        dataset_root = _unpack_to_cache(root)
    elif download:
        dataset_root = root
    else:
        raise DatasetError(
            f"MNIST not found under {root / 'MNIST' / 'raw'} and data.download=false; {SOURCE_HINT}"
        )
    try:
        dataset = MNIST(str(dataset_root), train=train, download=download and dataset_root == root)
    except (RuntimeError, OSError, ValueError) as err:
        raise DatasetError(
            f"MNIST could not be read from {dataset_root / 'MNIST' / 'raw'}: {err}. {SOURCE_HINT}"
        ) from err
    return dataset.data, dataset.targets.long()
