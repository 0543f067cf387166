"""Decode-once caches: a tensor file written atomically, keyed by what it was built from."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from bilevel_bench.files import replacing

log = logging.getLogger(__name__)


def digest(*parts: Any) -> str:
    return hashlib.sha1("\n".join(map(str, parts)).encode()).hexdigest()[:16]


def cached(path: Path, build: Callable[[], Any]) -> Any:
    """torch.load(path) if present, else build(), save atomically and return it.

    A file lock keeps parallel runs (Hydra multirun) from decoding the same data twice. A cache
    file that does not load (truncated by a full disk, written by another version) is built
    again from the source data: it only ever holds what build() makes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                return torch.load(path, weights_only=True)
            except Exception as err:  # torch's own message would call it a "checkpoint"
                log.warning(
                    "decode cache %s is unreadable (%s); decoding the source files again",
                    path,
                    type(err).__name__,
                )
        value = build()
        with replacing(path, binary=True) as handle:
            torch.save(value, handle)
        return value
