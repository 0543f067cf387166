"""Episode sampler and the Omniglot / Mini-ImageNet loaders on files generated here."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bilevel_bench import keys
from bilevel_bench.checks import ConfigError
from bilevel_bench.data import miniimagenet, omniglot
from bilevel_bench.data.episodes import EpisodeSampler


def _identity_images(n_classes=12, n_examples=10):
    """uint8 [C, E, 1, 1, 2]: pixel 0 = class id, pixel 1 = example id."""
    ids = torch.zeros(n_classes, n_examples, 1, 1, 2, dtype=torch.uint8)
    ids[..., 0] = torch.arange(n_classes, dtype=torch.uint8)[:, None, None, None]
    ids[..., 1] = torch.arange(n_examples, dtype=torch.uint8)[None, :, None, None]
    return ids


def _ids(part):
    pixels = (part.images * 255).round().long()[..., 0, 0, :]  # [..., tasks, n, 2]
    return pixels[..., 0], pixels[..., 1]


def _key(*seeds):
    return keys.run_keys(list(seeds))


def test_episodes_have_right_shapes_labels_and_disjoint_shots_and_queries():
    sampler = EpisodeSampler(_identity_images(), ways=4, shots=2, queries=3, split="meta-train")
    episodes = sampler.sample(_key(0, 1), 5)  # two runs, five tasks each
    assert episodes.support.images.shape == (2, 5, 8, 1, 1, 2)
    assert episodes.query.images.shape == (2, 5, 12, 1, 1, 2)
    assert episodes.classes.shape == (2, 5, 4) and episodes.task_keys.shape == (2, 5)
    assert episodes.support.labels.shape == (2, 5, 8)
    assert episodes.support.labels[1, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    support_class, support_example = _ids(episodes.support)
    query_class, query_example = _ids(episodes.query)
    for run in range(2):
        for task in range(5):
            classes = episodes.classes[run, task]
            support_labels = episodes.support.labels[run, task]
            query_labels = episodes.query.labels[run, task]
            assert len(set(classes.tolist())) == 4  # distinct classes per task
            # each label maps to the class it was drawn for, in support and query alike
            assert torch.equal(support_class[run, task], classes[support_labels])
            assert torch.equal(query_class[run, task], classes[query_labels])
            for way in range(4):
                shots = set(support_example[run, task][support_labels == way].tolist())
                queries = set(query_example[run, task][query_labels == way].tolist())
                assert len(shots) == 2 and len(queries) == 3 and not shots & queries


def test_episodes_are_a_function_of_the_key_alone():
    sampler = EpisodeSampler(_identity_images(), ways=3, shots=1, queries=2, split="meta-train")
    first, again = sampler.sample(_key(7), 4), sampler.sample(_key(7), 4)
    assert torch.equal(first.query.images, again.query.images)
    assert not torch.equal(first.classes, sampler.sample(_key(8), 4).classes)
    assert not torch.equal(first.classes[0, 0], first.classes[0, 1])  # tasks differ


def test_a_run_draws_the_same_episodes_alone_or_in_a_batch():
    sampler = EpisodeSampler(_identity_images(), ways=3, shots=2, queries=2, split="meta-train")
    batch = sampler.sample(_key(3, 4, 5), 6)
    for run, seed in enumerate((3, 4, 5)):
        alone = sampler.sample(_key(seed), 6)
        assert torch.equal(batch.support.images[run], alone.support.images[0])
        assert torch.equal(batch.query.images[run], alone.query.images[0])
        assert torch.equal(batch.task_keys[run], alone.task_keys[0])


def test_episode_i_does_not_depend_on_how_the_episodes_are_chunked():
    sampler = EpisodeSampler(_identity_images(), ways=3, shots=1, queries=2, split="meta-test")
    whole = sampler.sample(_key(0, 1), 5)
    tail = sampler.sample(_key(0, 1), 3, first_task=2)
    assert torch.equal(whole.query.images[:, 2:], tail.query.images)
    assert torch.equal(whole.task_keys[:, 2:], tail.task_keys)


def test_sampler_rejects_impossible_episodes_naming_the_key():
    with pytest.raises(ConfigError, match="task.ways"):
        EpisodeSampler(_identity_images(3), ways=5, shots=1, queries=1, split="meta-test")
    with pytest.raises(ConfigError, match="task.queries"):
        EpisodeSampler(_identity_images(), ways=2, shots=5, queries=6, split="meta-test")


# --- Omniglot ---------------------------------------------------------------------------------
N_DRAWERS = 3
ALPHABETS = {"images_background": ["Alpha", "Beta"], "images_evaluation": ["Gamma"]}


def _character_image(index: int) -> np.ndarray:
    """A 20x20 1-bit drawing whose ink (black, as in Omniglot) marks the character's index."""
    pixels = np.full((20, 20), 255, dtype=np.uint8)
    pixels[: index + 1, :4] = 0  # a vertical bar of length index + 1 in the left columns
    return pixels


def _write_omniglot(root: Path, as_zip: bool) -> int:
    base = root / "omniglot-py"
    index = 0
    for split, alphabets in ALPHABETS.items():
        members = []
        for alphabet in alphabets:
            for character in ("character01", "character02"):
                for drawer in range(N_DRAWERS):
                    rel = f"{split}/{alphabet}/{character}/{index:04d}_{drawer:02d}.png"
                    members.append((rel, _character_image(index)))
                index += 1
        for rel, pixels in members:
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).convert("1").save(path)
        if as_zip:
            with zipfile.ZipFile(base / f"{split}.zip", "w") as archive:
                for rel, _ in members:
                    archive.write(base / rel, rel)
            for rel, _ in members:
                (base / rel).unlink()
            for folder in sorted((base / split).rglob("*"), reverse=True):
                folder.rmdir()
            (base / split).rmdir()
    return index


def _omniglot_cfg(tmp_path, train_characters=4, split_seed=0, characters=None):
    dataset = OmegaConf.create(
        {
            "image_size": 10,
            "train_characters": train_characters,
            "split_seed": split_seed,
            "cache_dir": str(tmp_path / "cache"),
            "characters": characters,  # a few generated characters, not the full 1,623
        }
    )
    return dataset, OmegaConf.create({"root": str(tmp_path / "data"), "download": False})


@pytest.mark.parametrize("as_zip", [False, True], ids=["folders", "zips"])
def test_omniglot_loader_splits_characters_with_rotations_and_caches(tmp_path, as_zip):
    n_characters = _write_omniglot(tmp_path / "data", as_zip)
    dataset_cfg, data_cfg = _omniglot_cfg(tmp_path)
    splits = omniglot.load(dataset_cfg, data_cfg)
    assert splits.train.shape == (4 * 4, N_DRAWERS, 1, 10, 10)
    assert splits.test.shape == ((n_characters - 4) * 4, N_DRAWERS, 1, 10, 10)
    assert splits.train.dtype == torch.uint8
    # classes 4c..4c+3 are one character rotated by 0, 90, 180, 270 degrees; strokes are bright
    base = splits.train[0, 0, 0]
    assert base[:, :2].float().mean() > base[:, 6:].float().mean()
    assert torch.equal(splits.train[1, 0, 0], torch.rot90(base, 1))
    # no character (identified by its ink) is in both meta-train and meta-test
    ink = lambda t: t[::4, 0, 0].flatten(1).float().sum(1).tolist()  # noqa: E731
    assert not set(ink(splits.train)) & set(ink(splits.test))
    assert len(set(ink(splits.train)) | set(ink(splits.test))) == n_characters
    # decoded once: the cache file alone reproduces the data after the images are gone
    assert len(list((tmp_path / "cache").glob("omniglot_10px_*.pt"))) == 1
    again = omniglot.load(dataset_cfg, data_cfg)
    assert torch.equal(again.train, splits.train)


def test_omniglot_split_is_deterministic_and_seeded():
    train, test = omniglot.character_split(1623, 1200, 0)
    assert torch.equal(train, omniglot.character_split(1623, 1200, 0)[0])
    assert not torch.equal(train, omniglot.character_split(1623, 1200, 1)[0])
    assert len(set(train.tolist()) | set(test.tolist())) == 1623 and len(test) == 423
    assert omniglot.character_split(10, 6, None)[0].tolist() == list(range(6))
    with pytest.raises(ConfigError, match="dataset.train_characters"):
        omniglot.character_split(10, 10, 0)


def test_omniglot_missing_files_error_says_what_to_put_where(tmp_path):
    dataset_cfg, data_cfg = _omniglot_cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match="images_background.*data.root"):
        omniglot.load(dataset_cfg, data_cfg)


# --- Mini-ImageNet ----------------------------------------------------------------------------
def _write_miniimagenet(folder: Path, classes: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n_classes in classes.items():
        per_class, names = 4, [f"n{split}{i:03d}" for i in range(n_classes)]
        data = np.zeros((n_classes * per_class, 84, 84, 3), dtype=np.uint8)
        class_dict = {}
        for c, name in enumerate(reversed(names)):  # file order != sorted order
            rows = list(range(c * per_class, (c + 1) * per_class))
            data[rows] = 10 * c + np.arange(per_class)[:, None, None, None]
            class_dict[name] = rows
        with open(folder / miniimagenet.file_name(split), "wb") as handle:
            pickle.dump({"image_data": data, "class_dict": class_dict}, handle)


def test_miniimagenet_loader_reads_the_standard_pickles(tmp_path):
    _write_miniimagenet(tmp_path / "miniimagenet", {"train": 5, "val": 3, "test": 4})
    data_cfg = OmegaConf.create({"root": str(tmp_path)})
    splits = miniimagenet.load(OmegaConf.create({"test_split": "test"}), data_cfg)
    assert splits.train.shape == (5, 4, 3, 84, 84) and splits.test.shape == (4, 4, 3, 84, 84)
    # classes sorted by name: the last-written class comes first, its examples in file order
    assert splits.train[0, :, 0, 0, 0].tolist() == [40, 41, 42, 43]
    val = miniimagenet.load(OmegaConf.create({"test_split": "val"}), data_cfg)
    assert val.test.shape[0] == 3


def test_miniimagenet_missing_files_error_lists_them(tmp_path):
    data_cfg = OmegaConf.create({"root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="mini-imagenet-cache-train.pkl.*miniimagenet"):
        miniimagenet.load(OmegaConf.create({"test_split": "test"}), data_cfg)
