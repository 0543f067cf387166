"""Checkpoints: everything a run needs to continue exactly where it stopped.

One file per config, `<results_dir>/checkpoints/<config_hash>/state.pt`. It is keyed by the
config hash, not by the Hydra run dir, because the run dir is new at every invocation while the
hash is what "the same command" means; the hash leaves out checkpoint_every, force and
results_dir, so changing how often to checkpoint still resumes. Next to runs.csv, so that a
sweep and its checkpoints move together (one results_dir per sweep or machine).

Written atomically (temporary file, then os.replace): a kill during the write leaves the previous
checkpoint intact. Only tensors and plain numbers are stored (RNG states as tensors), so it loads
with torch.load(weights_only=True). The checkpoint is deleted once the run has a row (ok, failed
or diverged): it exists only to survive interruptions (kill, timeout, preemption).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass
class RunParts:
    """The live objects of one run; a checkpoint captures their state and restores it in place."""

    u: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    solver: Any
    task: Any
    generator: torch.Generator  # the stream the runner passes to the problem and solver
    curve: list[dict[str, float]]
    progress: dict[str, float]  # {"step": upper steps done, "train_time": seconds so far}
    device: torch.device


class Checkpoint:
    def __init__(self, path: Path, every: int, config_hash: str):
        self.path, self.every, self.config_hash = Path(path), every, config_hash

    @classmethod
    def for_run(cls, cfg, config_hash: str) -> Checkpoint | None:
        """None when checkpointing is off (checkpoint_every=0): nothing is written or read."""
        every = int(cfg.get("checkpoint_every", 0))
        if every == 0:
            return None
        path = Path(cfg.results_dir) / "checkpoints" / config_hash / "state.pt"
        return cls(path, every, config_hash)

    def due(self, step: int, total_steps: int) -> bool:
        # the last step is never saved: the run is about to write its row and delete the file
        return step % self.every == 0 and step < total_steps

    def save(self, parts: RunParts) -> None:
        payload = {
            "format": FORMAT,
            "config_hash": self.config_hash,
            "step": int(parts.progress["step"]),
            "train_time": float(parts.progress["train_time"]),
            "u": _detached(parts.u),
            "v": _detached(parts.v),
            "solver": parts.solver.state_dict(),
            "task": parts.task.state_dict(),
            "curve": [dict(point) for point in parts.curve],
            "rng": _rng_state(parts.generator, parts.device),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def restore(self, parts: RunParts) -> bool:
        """Load the checkpoint into `parts` if there is one; True when the run was resumed."""
        if not self.path.exists():
            return False
        try:
            # CPU first: RNG states must stay CPU tensors, and torch.optim places its own state.
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # written by an incompatible version: start afresh, say so
            log.warning(
                "ignoring unreadable checkpoint %s (%s); starting from step 0", self.path, err
            )
            return False
        if payload.get("format") != FORMAT or payload.get("config_hash") != self.config_hash:
            log.warning("ignoring checkpoint %s: it belongs to another config", self.path)
            return False
        with torch.no_grad():
            for live, saved in ((parts.u, payload["u"]), (parts.v, payload["v"])):
                for name, tensor in live.items():
                    tensor.copy_(saved[name])
        parts.solver.load_state_dict(_to_device(payload["solver"], parts.device))
        parts.task.load_state_dict(payload["task"])
        parts.curve[:] = payload["curve"]
        parts.progress["step"] = payload["step"]
        parts.progress["train_time"] = payload["train_time"]
        _set_rng_state(payload["rng"], parts.generator, parts.device)
        log.info("resumed from %s at upper step %d", self.path, payload["step"])
        return True

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # not empty (a concurrent writer's temporary file): leave it
            pass


def _detached(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach() for name, tensor in variables.items()}


def _is_optimizer_state(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"state", "param_groups"}


def _to_device(value: Any, device: torch.device) -> Any:
    """Solver tensors (multipliers, warm starts) back beside the variables.

    Optimiser state dicts are left alone: torch.optim casts them to each parameter's device and
    keeps `step` on the CPU where it must stay.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if _is_optimizer_state(value):
        return value
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python_version": version,
        "python_internal": torch.tensor(internal, dtype=torch.int64),
        "python_gauss_next": gauss_next,
    }
    if device.type == "cuda":  # only this run's GPU: touching others would create contexts there
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    internal = tuple(int(x) for x in state["python_internal"].tolist())
    random.setstate((state["python_version"], internal, state["python_gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
