"""A user problem that fails on request, for the sweep tests (imported by `_target_`, so the
test subprocesses get this folder on PYTHONPATH)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import pytest
import torch

from bilevel_bench import checkpoint
from bilevel_bench.problem import BilevelProblem
from bilevel_bench.tasks.synthetic import Quadratic


class ScriptedQuadratic(Quadratic):
    """The random quadratic problem; mode=raise|diverge|oom makes every lower objective fail.

    SWEEP_TEST_DELAY_S (environment, so it is not part of the config hash) slows each step's
    batch draw down, which lets a test kill the run mid-way.
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

    def sample_batches(self, stream):
        delay = float(os.environ.get("SWEEP_TEST_DELAY_S", "0"))
        if delay:
            time.sleep(delay)
        return None, None


class DivergesPastHalf(BilevelProblem):
    """v moves towards the run's random u; g turns NaN once v passes 0.5, so the seeds whose u
    is above 0.5 diverge after a few steps and the others converge. One run (vmapped)."""

    name = "sometimes_nan"

    def init_variables(self, generator):
        return {"u": torch.randn(1, generator=generator)}, {"v": torch.zeros(1)}

    def f(self, u, v, batch):
        return ((v["v"] - 1.0) ** 2).sum()

    def g(self, u, v, batch):
        poison = torch.where(v["v"] > 0.5, torch.nan, 1.0)
        return (poison * (v["v"] - u["u"]) ** 2).sum()


class ReadsAValue(BilevelProblem):
    """Breaks the rule for problems written for one run: g reads a value with .item(), which
    torch.func.vmap (and a GPU step) cannot do."""

    def init_variables(self, generator):
        return {"u": torch.ones(1)}, {"v": torch.zeros(1)}

    def f(self, u, v, batch):
        return (v["v"] ** 2).sum()

    def g(self, u, v, batch):
        scale = 2.0 if u["u"].sum().item() > 0 else 1.0
        return scale * ((v["v"] - u["u"]) ** 2).sum()


@contextmanager
def killed_at_the_second_checkpoint(monkeypatch):
    """The run inside is "killed" (KeyboardInterrupt) when it is about to write its second
    checkpoint; yields the list of steps whose checkpoint was written."""
    real_save, saved = checkpoint.Checkpoint.save, []

    def save_then_die(self, state, progress):
        if saved:
            raise KeyboardInterrupt
        saved.append(progress.step)
        real_save(self, state, progress)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.Checkpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            yield saved
