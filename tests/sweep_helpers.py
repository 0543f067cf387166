"""A user problem that fails on request, for the sweep tests (imported by `_target_`, so the
test subprocesses get this folder on PYTHONPATH)."""

from __future__ import annotations

import os
import time

import torch

from bilevel_bench.tasks.synthetic import Quadratic


class ScriptedQuadratic(Quadratic):
    """The random quadratic problem; mode=raise|diverge|oom makes every lower objective fail.

    SWEEP_TEST_DELAY_S (environment, so it is not part of the config hash) slows each batch
    draw down, which lets a test kill the run mid-way.
    """

    name = "scripted_quadratic"

    def __init__(self, mode: str = "ok", device="cpu", dtype=None):
        super().__init__(device=device, dtype=dtype)
        self.mode = mode

    def g(self, u, v, batch):
        if self.mode == "raise":
            raise RuntimeError("deliberate failure in g")
        if self.mode == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (deliberate, raised by the test)")
        value = super().g(u, v, batch)
        return value * float("nan") if self.mode == "diverge" else value

    def sample_batch(self, split, generator):
        delay = float(os.environ.get("SWEEP_TEST_DELAY_S", "0"))
        if delay:
            time.sleep(delay)
        return None
