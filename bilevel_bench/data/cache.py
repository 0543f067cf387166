"""Decode-once caches: a tensor file written atomically, keyed by what it was built from."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock


def digest(*parts: Any) -> str:
    return hashlib.sha1("\n".join(map(str, parts)).encode()).hexdigest()[:16]


def cached(path: Path, build: Callable[[], Any]) -> Any:
    """torch.load(path) if present, else build(), save atomically and return it.

    A file lock keeps parallel runs (Hydra multirun) from decoding the same data twice.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return torch.load(path, weights_only=True)
        value = build()
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(value, tmp)
        os.replace(tmp, path)
        return value
