"""Omniglot for few-shot learning (paper section 3.3): 28x28, strokes = 1, four rotations as classes.

Reads torchvision's layout under `root`: the extracted folders
`omniglot-py/images_background/<Alphabet>/<characterNN>/*.png` and `.../images_evaluation/...`,
or the original zips `omniglot-py/images_{background,evaluation}.zip`. The 32,460 PNGs are
decoded once into a uint8 tensor file in `cache_dir`, keyed by the PNGs' content (a changed
source file is decoded again); later runs load that file. A copy without all 1,623 characters
is refused (`+dataset.characters=N` accepts N, `null` any number).

Split: all 1,623 characters sorted by "alphabet/character", permuted with `split_seed`
(null keeps the sorted order); the first `train_characters` (1,200, as the authors) are
meta-train, the rest meta-test. Each character then gives 4 classes (0, 90, 180, 270 degrees),
so a character's rotations never straddle the split.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bilevel_bench.checks import ConfigError
from bilevel_bench.data.cache import cached, digest
from bilevel_bench.data.episodes import FewShotSplits
from bilevel_bench.data.errors import DatasetError

SPLITS = ("images_background", "images_evaluation")
FOLDER = "omniglot-py"
CACHE_FORMAT = 1  # bump when the decoding changes
CHARACTERS = 1623  # 964 background + 659 evaluation characters, 20 drawings each


def _base(root: Path) -> Path:
    """root may be the folder holding omniglot-py/ (torchvision's root) or omniglot-py itself."""
    return root if root.name == FOLDER else root / FOLDER


def _list_folders(base: Path):
    """{character key: [(png name, where, content)]} from the extracted folders."""
    out = {}
    for split in SPLITS:
        for png in (base / split).glob("*/*/*.png"):
            key = f"{png.parent.parent.name}/{png.parent.name}"
            out.setdefault(key, []).append((png.name, str(png), png.read_bytes()))
    return out


def _list_zips(base: Path):
    out = {}
    for split in SPLITS:
        path = base / f"{split}.zip"
        try:
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    parts = name.split("/")
                    if len(parts) == 4 and parts[3].endswith(".png"):
                        key = f"{parts[1]}/{parts[2]}"
                        out.setdefault(key, []).append(
                            (parts[3], f"{path}:{name}", archive.read(name))
                        )
        except (zipfile.BadZipFile, OSError) as err:
            raise DatasetError(
                f"Omniglot: {path} is not a readable zip ({err}); download it again"
            ) from err
    return out


def _find_listing(base: Path, download: bool, root: Path):
    if all((base / split).is_dir() for split in SPLITS):
        return "folders", _list_folders(base)
    if all((base / f"{split}.zip").is_file() for split in SPLITS):
        return "zips", _list_zips(base)
    if download:
        _download(root)
        return "folders", _list_folders(base)
    raise DatasetError(_missing_message(base))


def _missing_message(base: Path) -> str:
    return (
        f"Omniglot not found under {base}: expected the folders "
        f"{base}/images_background/ and {base}/images_evaluation/ (torchvision's extracted "
        f"layout) or the zips {base}/images_background.zip and images_evaluation.zip from "
        "https://github.com/brendenlake/omniglot/tree/master/python. Set data.root to the folder "
        "that holds omniglot-py/ (e.g. data.root=../shared/data), or data.download=true online."
    )


def _download(root: Path) -> None:
    from torchvision.datasets import Omniglot

    try:
        for background in (True, False):
            Omniglot(str(root), background=background, download=True)
    except Exception as err:  # offline machines: say where the files go instead
        raise DatasetError(f"{_missing_message(_base(root))} (download failed: {err})") from err


def _check_complete(listing: dict, base: Path, expected: int | None) -> None:
    """A partial copy would give other classes, episodes and numbers without a word: refuse it."""
    if expected is not None and len(listing) != expected:
        raise DatasetError(
            f"Omniglot under {base} holds {len(listing)} of its {expected:,} characters: restore "
            f"the missing ones, or pass +dataset.characters={len(listing)} to use this copy"
        )
    counts = {key: len(pngs) for key, pngs in listing.items()}
    if len(set(counts.values())) > 1:
        fewest = min(counts, key=counts.get)
        raise DatasetError(
            f"Omniglot characters hold different numbers of drawings: {base}/*/{fewest} has "
            f"{counts[fewest]}, others up to {max(counts.values())}; restore the missing files"
        )


def _content_key(listing: dict) -> str:
    """What the decoded tensor depends on: every PNG's name and bytes."""
    content = hashlib.sha1()
    for key in sorted(listing):
        for name, _, data in sorted(listing[key]):
            content.update(f"{key}/{name}\n".encode())
            content.update(data)
    return content.hexdigest()


def _read_png(where: str, data: bytes) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    except Exception as err:  # PIL names neither the file nor the fix
        raise DatasetError(
            f"Omniglot: {where} is not a readable PNG ({err}); restore it from the original zip"
        ) from err


def _decode(listing: dict, image_size: int) -> dict:
    """uint8 [characters, drawers, size, size], strokes bright, area-downsampled from 105x105."""
    keys = sorted(listing)
    images = []
    for key in keys:
        arrays = [_read_png(where, data) for _, where, data in sorted(listing[key])]
        strokes = 1.0 - torch.from_numpy(np.stack(arrays)).float()[:, None] / 255.0
        small = F.interpolate(strokes, size=(image_size, image_size), mode="area")
        images.append((small[:, 0] * 255).round().to(torch.uint8))
    return {"images": torch.stack(images), "characters": keys}


def _with_rotations(images: torch.Tensor) -> torch.Tensor:
    """[chars, n, h, w] -> [chars * 4, n, 1, h, w]; class 4c + r is character c rotated r * 90."""
    rotated = torch.stack([torch.rot90(images, r, dims=(-2, -1)) for r in range(4)], dim=1)
    return rotated.flatten(0, 1)[:, :, None]


def character_split(n_characters: int, train_characters: int, split_seed: int | None):
    """(train, test) character indices into the sorted character list."""
    if not 0 < train_characters < n_characters:
        raise ConfigError(
            f"dataset.train_characters={train_characters} must be between 1 and "
            f"{n_characters - 1} (Omniglot has {n_characters} characters); the authors use 1200"
        )
    if split_seed is None:
        order = torch.arange(n_characters)
    else:
        order = torch.randperm(n_characters, generator=torch.Generator().manual_seed(split_seed))
    return order[:train_characters], order[train_characters:]


def load(dataset_cfg, data_cfg) -> FewShotSplits:
    root = Path(str(data_cfg.root)).expanduser()
    base = _base(root)
    _, listing = _find_listing(base, bool(data_cfg.get("download", False)), root)
    expected = dataset_cfg.get("characters", CHARACTERS)
    _check_complete(listing, base, None if expected is None else int(expected))
    size = int(dataset_cfg.image_size)
    key = digest(CACHE_FORMAT, _content_key(listing), size)
    cache_file = Path(str(dataset_cfg.cache_dir)).expanduser() / f"omniglot_{size}px_{key}.pt"
    decoded = cached(cache_file, lambda: _decode(listing, size))
    split_seed = dataset_cfg.split_seed
    train, test = character_split(
        len(decoded["characters"]),
        int(dataset_cfg.train_characters),
        None if split_seed is None else int(split_seed),
    )
    images = decoded["images"]
    return FewShotSplits("omniglot", _with_rotations(images[train]), _with_rotations(images[test]))
