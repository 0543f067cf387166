"""Mini-ImageNet (Vinyals et al.; Ravi & Larochelle's 64/16/20-class split) at 84x84.

Reads the widely used pickles `mini-imagenet-cache-{train,val,test}.pkl`: each a dict with
'image_data' (uint8 [N, 84, 84, 3]) and 'class_dict' (class name -> list of row indices).
Looked for in `<data.root>/miniimagenet/` and then `<data.root>/`. As in the authors' code,
meta-training uses the train split and meta-test the test split (`dataset.test_split=val`
evaluates on the 16 validation classes instead).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from bilevel_bench.checks import ConfigError
from bilevel_bench.data.episodes import FewShotSplits
from bilevel_bench.data.errors import DatasetError

FOLDER = "miniimagenet"
SPLITS = ("train", "val", "test")


def file_name(split: str) -> str:
    return f"mini-imagenet-cache-{split}.pkl"


def _find(root: Path, split: str) -> Path:
    candidates = [root / FOLDER / file_name(split), root / file_name(split)]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(
        f"Mini-ImageNet {split} split not found: tried {', '.join(map(str, candidates))}. "
        f"Put {', '.join(file_name(s) for s in SPLITS)} (the standard pickles, e.g. from "
        "https://github.com/renmengye/few-shot-ssl-public, which the authors used) into "
        f"{root / FOLDER}/, or set data.root to the folder holding them."
    )


def read_split(path: Path) -> torch.Tensor:
    """uint8 [classes, examples, 3, 84, 84], classes sorted by name, examples in file order."""
    try:
        with open(path, "rb") as handle:
            content = pickle.load(handle)
    except Exception as err:  # unpickling garbage raises many different types
        raise DatasetError(f"{path} is corrupt ({type(err).__name__}: {err}); replace it") from err
    if not isinstance(content, dict) or not {"image_data", "class_dict"} <= set(content):
        raise DatasetError(
            f"{path} is not a Mini-ImageNet cache pickle: expected a dict with 'image_data' "
            "(uint8 N x 84 x 84 x 3) and 'class_dict' (class name -> list of indices)"
        )
    data = np.asarray(content["image_data"])
    if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
        raise DatasetError(
            f"{path}: 'image_data' must be uint8 N x H x W x 3, got {data.dtype} {data.shape}"
        )
    class_dict = content["class_dict"]
    # the standard files hold 600 per class; keep a dense tensor if a custom file is uneven
    per_class = min(len(indices) for indices in class_dict.values())
    rows = np.stack([np.asarray(class_dict[name][:per_class]) for name in sorted(class_dict)])
    images = torch.from_numpy(data[rows])  # [classes, examples, h, w, 3]
    return images.permute(0, 1, 4, 2, 3).contiguous()


def load(dataset_cfg, data_cfg) -> FewShotSplits:
    root = Path(str(data_cfg.root)).expanduser()
    test_split = str(dataset_cfg.test_split)
    if test_split not in ("val", "test"):
        raise ConfigError(f"dataset.test_split={test_split!r} must be val or test")
    train = read_split(_find(root, "train"))
    test = read_split(_find(root, test_split))
    return FewShotSplits("miniimagenet", train, test)
