"""Checkpoints: a run's state, so that it continues exactly where it stopped.

The solver state (bilevel_bench.solvers.base) holds everything that changes during training,
random streams included, so a checkpoint is that state plus the loop's progress, the learning
curves and which runs of a batch have diverged. Nothing else is needed for a bit-identical resume.

One file per batched computation, `<results_dir>/checkpoints/<key>/state.pt`, where the key is
the config hash (results.batch_key: for runs=K, the hash and the seed list). It is keyed by the
hash, not by the Hydra run dir, because the run dir is new at every invocation while the hash is
what "the same command" means; the hash leaves out checkpoint_every, force and results_dir, so
changing how often to checkpoint still resumes. Next to runs.csv, so that a sweep and its
checkpoints move together.

Written atomically (bilevel_bench.files.replacing): a kill during the write leaves the previous
checkpoint intact. Only tensors and plain values are stored, so it loads with
torch.load(weights_only=True). The checkpoint is deleted once the rows are written (ok, failed
or diverged): it exists only to survive interruptions (kill, timeout, preemption).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bilevel_bench.files import replacing

log = logging.getLogger(__name__)

FORMAT = 2


@dataclass
class Progress:
    """What the training loop needs besides the solver state to continue."""

    step: int  # upper steps done
    train_time: float  # seconds of training so far
    curves: list[list[dict[str, float]]]  # one learning curve per run
    diverged: dict[int, str]  # run index -> why it stopped (its state is frozen since)


class Checkpoint:
    def __init__(self, path: Path, every: int, key: str):
        self.path, self.every, self.key = Path(path), every, key

    @classmethod
    def for_run(cls, cfg, key: str) -> Checkpoint | None:
        """None when checkpointing is off (checkpoint_every=0): nothing is written or read."""
        every = int(cfg.get("checkpoint_every", 0))
        if every == 0:
            return None
        return cls(Path(cfg.results_dir) / "checkpoints" / key / "state.pt", every, key)

    def due(self, step: int, total_steps: int) -> bool:
        # the last step is never saved: the run is about to write its rows and delete the file
        return step % self.every == 0 and step < total_steps

    def save(self, state: dict[str, Any], progress: Progress) -> None:
        payload = {
            "format": FORMAT,
            "key": self.key,
            "state": state,
            "step": progress.step,
            "train_time": progress.train_time,
            "curves": progress.curves,
            "diverged": progress.diverged,
        }
        with replacing(self.path, binary=True) as handle:
            torch.save(payload, handle)

    def load(self, device: torch.device) -> tuple[dict[str, Any], Progress] | None:
        """(state, progress) from the checkpoint if there is a usable one, else None."""
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as err:  # written by an incompatible version: start afresh, say so
            log.warning(
                "ignoring unreadable checkpoint %s (%s); starting from step 0", self.path, err
            )
            return None
        if payload.get("format") != FORMAT or payload.get("key") != self.key:
            log.warning("ignoring checkpoint %s: it belongs to another config", self.path)
            return None
        progress = Progress(
            payload["step"], payload["train_time"], payload["curves"], payload["diverged"]
        )
        log.info("resumed from %s at upper step %d", self.path, progress.step)
        return payload["state"], progress

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # not empty (a concurrent writer's temporary file): leave it
            pass


def same_structure(saved: Any, fresh: Any) -> bool:
    """Whether a loaded state has the keys and shapes of a freshly initialised one."""
    if isinstance(fresh, dict):
        return (
            isinstance(saved, dict)
            and saved.keys() == fresh.keys()
            and all(same_structure(saved[k], fresh[k]) for k in fresh)
        )
    if isinstance(fresh, torch.Tensor):
        return isinstance(saved, torch.Tensor) and saved.shape == fresh.shape
    return True
