"""Which device a job runs on: with device=auto (or cuda), never a GPU another job holds.

Each job claims one visible GPU with a per-host lock file named after the GPU's UUID (not its
index, which depends on CUDA_VISIBLE_DEVICES), starting at GPU (job number mod visible GPUs),
and keeps it until its run ends; when every visible GPU is held it waits for one. So:
- joblib / submitit_local / the basic launcher on a multi-GPU box: jobs spread over the GPUs and
  never share one, however many run at once;
- SLURM (submitit) and Ray give each job its own CUDA_VISIBLE_DEVICES: the job sees one GPU and
  claims it.
An explicit device=cuda:N is used as given (no claim): the user chose.
Locks are flock-based (filelock), so a killed job releases its GPU with its process.
"""

from __future__ import annotations

import ctypes
import getpass
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from bilevel_bench import checks

log = logging.getLogger(__name__)

POLL_S = 2.0


def lock_dir() -> Path:
    # per user: lock files another user created would not be writable
    uid = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return Path(tempfile.gettempdir()) / f"bilevel-bench-gpu-locks-{uid}"


@contextmanager
def claim(name: str, job_num: int = 0) -> Iterator[torch.device]:
    """The device for `device=name`, held for the duration of the `with` block."""
    if name == "auto" and not torch.cuda.is_available():
        keep_freed_cpu_memory()
        yield torch.device("cpu")
        return
    if name not in ("auto", "cuda"):
        device = _explicit(name)
        if device.type == "cpu":
            keep_freed_cpu_memory()
        yield device
        return
    if not torch.cuda.is_available():
        raise checks.ConfigError(
            "device=cuda was asked for but CUDA is not available; use device=cpu or device=auto"
        )
    ids = [_gpu_id(index) for index in range(torch.cuda.device_count())]
    with claim_slot(ids, job_num, lock_dir()) as index:
        yield torch.device("cuda", index)


@cache
def keep_freed_cpu_memory() -> None:
    """Keep freed CPU memory in the process instead of handing it back to the OS.

    glibc serves every block above a threshold (at most 32 MB) with mmap and unmaps it on
    free, so each such tensor is paid again in page faults the next time it is allocated. A
    batch of K runs makes every activation K times larger and crosses that line: elementwise
    ops on the MNIST CNN's activations ran 5 to 16 times slower at K = 4 than at K = 1 for 4
    times the data. Linux with glibc only; elsewhere nothing changes.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def _explicit(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise checks.ConfigError(
            f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto"
        )
    return device


def _gpu_id(index: int) -> str:
    return str(getattr(torch.cuda.get_device_properties(index), "uuid", index))


@contextmanager
def claim_slot(
    ids: Sequence[str], job_num: int, directory: Path, poll_s: float = POLL_S
) -> Iterator[int]:
    """Hold the lock of one of `ids` (trying job_num mod len(ids) first); yield its index."""
    directory.mkdir(parents=True, exist_ok=True)
    order = [(job_num + offset) % len(ids) for offset in range(len(ids))]
    waited = False
    while True:
        for index in order:
            lock = FileLock(str(directory / f"{ids[index]}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield index
            finally:
                lock.release()
            return
        if not waited:
            log.info("all %d visible GPUs are held by other jobs; waiting for one", len(ids))
            waited = True
        time.sleep(poll_s)
