"""Data for the denoising task: label noise, splits, and each loader on small files written in
the dataset's real on-disk format, including the errors for missing and corrupt files."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from solver_harness import SHARED_DATA

from bilevel_bench.data.cifar10 import load_cifar10
from bilevel_bench.data.errors import DatasetError
from bilevel_bench.data.images import load_image_sets
from bilevel_bench.data.mnist import load_mnist
from bilevel_bench.data.noise import corrupt_labels
from bilevel_bench.data.splits import split_train_val
from bilevel_bench.data.svhn import load_svhn


def test_noise_changes_exact_fraction_to_other_classes_reproducibly():
    labels = torch.randint(10, (1000,), generator=torch.Generator().manual_seed(1))
    noisy, is_noisy = corrupt_labels(labels, 0.25, 10, torch.Generator().manual_seed(7))
    assert int(is_noisy.sum()) == 250
    assert bool((noisy[is_noisy] != labels[is_noisy]).all())  # never the same class
    assert bool((noisy[~is_noisy] == labels[~is_noisy]).all())
    assert noisy.min() >= 0 and noisy.max() <= 9
    again, again_mask = corrupt_labels(labels, 0.25, 10, torch.Generator().manual_seed(7))
    assert torch.equal(again, noisy) and torch.equal(again_mask, is_noisy)
    other, _ = corrupt_labels(labels, 0.25, 10, torch.Generator().manual_seed(8))
    assert not torch.equal(other, noisy)


def test_noise_with_two_classes_flips_the_label():
    labels = torch.tensor([0, 1] * 50)
    noisy, is_noisy = corrupt_labels(labels, 0.5, 2, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[is_noisy], 1 - labels[is_noisy])


def test_balanced_split_takes_equal_counts_per_class_and_is_disjoint():
    labels = torch.arange(10).repeat(50)[
        torch.randperm(500, generator=torch.Generator().manual_seed(0))
    ]
    train, val = split_train_val(labels, 100, None, True, 10, torch.Generator().manual_seed(3))
    assert torch.equal(torch.bincount(labels[val], minlength=10), torch.full((10,), 10))
    assert len(train) == 400 and len(set(train.tolist()) | set(val.tolist())) == 500


def _write_idx(path, array, magic):
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist_folder(root, n_train=30, n_test=10):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    return raw


def test_mnist_reads_idx_files(tmp_path):
    _mnist_folder(tmp_path)
    images, labels = load_mnist(tmp_path, train=True, download=False)
    assert images.shape == (30, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [i % 10 for i in range(30)]


def test_mnist_corrupt_gz_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_BENCH_CACHE", str(tmp_path / "cache"))
    raw = _mnist_folder(tmp_path / "src")
    for path in list(raw.iterdir()):  # gzip them: a .gz-only folder, as in ../shared/data
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    with pytest.raises(DatasetError, match=r"MNIST: .*train-images-idx3-ubyte.gz is corrupt"):
        load_mnist(tmp_path / "src", train=True, download=False)


def _cifar_folder(root, n=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
    return folder


def test_cifar10_reads_python_pickles_in_hwc_order(tmp_path):
    folder = _cifar_folder(tmp_path)
    images, labels = load_cifar10(tmp_path, train=True, download=False)
    assert images.shape == (40, 32, 32, 3) and labels.tolist() == list(range(8)) * 5
    with open(folder / "data_batch_1", "rb") as handle:
        first = pickle.load(handle)["data"][0].reshape(3, 32, 32)
    assert np.array_equal(images[0].numpy(), first.transpose(1, 2, 0))


def test_cifar10_sets_split_and_reach_the_model_layout(tmp_path):
    _cifar_folder(tmp_path)
    cfg = OmegaConf.create({"name": "cifar10", "n_classes": 10, "val_size": 10, "train_size": None})
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    sets = load_image_sets(cfg, str(tmp_path), False, generators, "cpu")
    assert sets.images.shape == (40, 3, 32, 32)  # one copy of the images for both runs
    assert sets.train_index.shape == (2, 30) and sets.val_index.shape == (2, 10)
    for train, val in zip(sets.train_index, sets.val_index, strict=True):
        assert len(set(train.tolist()) | set(val.tolist())) == 40  # a split: disjoint, complete
    assert not torch.equal(sets.val_index[0], sets.val_index[1])  # each seed its own split
    assert sets.test_x.shape == (8, 3, 32, 32) and 0 <= float(sets.images.min())
    assert float(sets.images.max()) <= 1


def test_cifar10_missing_and_corrupt_errors(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"CIFAR-10 not found: no complete copy under .*cifar-10-batches-py.*data_batch_1",
    ):
        load_cifar10(tmp_path, train=True, download=False)
    folder = _cifar_folder(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"data_batch_3 is corrupt"):
        load_cifar10(tmp_path, train=True, download=False)


def _svhn_folder(root, n=20):
    import scipy.io

    folder = root / "svhn"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # SVHN stores digit 0 as label 10
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
    return folder


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    _svhn_folder(tmp_path)
    images, labels = load_svhn(tmp_path, "train", download=False)
    assert images.shape == (20, 32, 32, 3)
    assert labels.tolist() == [(i % 10 + 1) % 10 for i in range(20)]
    cfg = OmegaConf.create(
        {"name": "svhn", "n_classes": 10, "val_size": 10, "train_size": None,
         "balanced_val": True, "greyscale": True}
    )  # fmt: skip
    sets = load_image_sets(cfg, str(tmp_path), False, [torch.Generator().manual_seed(0)], "cpu")
    assert sets.images.shape == (20, 1, 32, 32) and sets.val_index.shape == (1, 10)
    assert sorted(sets.labels[sets.val_index[0]].tolist()) == list(range(10))  # balanced


def test_svhn_missing_and_corrupt_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"SVHN not found: .*train_32x32.mat is missing"):
        load_svhn(tmp_path, "train", download=False)
    folder = _svhn_folder(tmp_path)
    (folder / "test_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"SVHN: .*test_32x32.mat is corrupt"):
        load_svhn(tmp_path, "test", download=False)


@pytest.mark.parametrize("dataset", ["CIFAR10", "SVHN"])
def test_failed_download_names_the_dataset_and_the_offline_fix(tmp_path, monkeypatch, dataset):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("no route to host")

    monkeypatch.setattr(torchvision.datasets, dataset, offline)
    name = {"CIFAR10": "CIFAR-10", "SVHN": "SVHN"}[dataset]
    with pytest.raises(DatasetError, match=rf"{name} download into .* failed \(no route to host\)"):
        if dataset == "CIFAR10":
            load_cifar10(tmp_path, train=True, download=True)
        else:
            load_svhn(tmp_path, "train", download=True)


SHARED_MNIST = SHARED_DATA / "MNIST"
_READ_SHAPES = (
    "import sys; from bilevel_bench.data.mnist import load_mnist; "
    "images, labels = load_mnist(sys.argv[1], train=True, download=False); "
    "print(tuple(images.shape), int(labels.sum()))"
)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs ../shared/data/MNIST")
def test_concurrent_runs_unpack_the_gz_files_once_and_all_read_them(tmp_path):
    """Runs started together (reproduce_denoise.sh JOBS>1) share one cache; each must read the
    full 60000 images, never a file another process is still writing."""
    env = {**os.environ, "BILEVEL_BENCH_CACHE": str(tmp_path / "cache")}
    processes = [
        subprocess.Popen([sys.executable, "-c", _READ_SHAPES, str(SHARED_MNIST.parent)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert len({output.strip() for output in outputs}) == 1
    assert outputs[0].startswith("(60000, 28, 28) ")
