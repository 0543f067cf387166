"""No step waits for the device: inside `solver.step`, everything that would copy a value to the
host (Tensor.item, bool(), float(), int(), tolist, nonzero) raises. On a GPU the same steps run
under torch.cuda.set_sync_debug_mode("error")."""

from __future__ import annotations

import contextlib

import pytest
import torch
from solver_harness import compose_config
from test_runs_axis import PROBLEMS, cases

from bilevel_bench import runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.tasks import build_task

HOST_READS = ["item", "__bool__", "__float__", "__int__", "tolist", "nonzero"]


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def host_reads_raise(monkeypatch):
    """Every way of reading a tensor's value on the host raises while active."""
    with monkeypatch.context() as patch:
        for name in HOST_READS:

            def refuse(*args, _name=name, **kwargs):
                raise HostRead(f"Tensor.{_name} inside a solver step (a host synchronisation)")

            patch.setattr(torch.Tensor, name, refuse)
        patch.setattr(torch, "nonzero", lambda *a, **k: (_ for _ in ()).throw(HostRead("nonzero")))
        yield


def initial(overrides, device):
    cfg = compose_config(*overrides, f"device={device}")
    runner.validate(cfg)
    seeds = [0, 1]
    task = build_task(cfg, torch.device(device), seeds)
    return runner._initial_state(cfg, task, seeds, torch.device(device))


@pytest.mark.parametrize("overrides", list(cases(sorted(PROBLEMS))))
def test_a_step_never_reads_a_value_on_the_host(overrides, monkeypatch):
    tightening = "solver.eps0=1e9" in overrides  # every step takes the torch.where branch
    try:
        state, solver = initial(overrides, "cpu")
    except ConfigError:  # a solver that refuses the problem (fmd above its memory budget)
        return
    with host_reads_raise(monkeypatch):
        for _ in range(2):
            state, diagnostics = solver.step(state)
    assert int(state["stream"]["step"][0]) == 2
    if tightening:
        assert state["tightenings"].tolist() == [2, 2]
    assert all(isinstance(value, torch.Tensor) for value in diagnostics.values())


def test_the_guard_catches_a_host_read(monkeypatch):
    with host_reads_raise(monkeypatch), pytest.raises(HostRead):
        if torch.ones(1) > 0:  # noqa: SIM108 - the point is the implicit bool()
            pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("overrides", list(cases(sorted(PROBLEMS))))
def test_a_cuda_step_never_synchronises(overrides):
    try:
        state, solver = initial(overrides, "cuda")
    except ConfigError:
        return
    state, _ = solver.step(state)  # first call: lazy CUDA initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            state, _ = solver.step(state)
    finally:
        torch.cuda.set_sync_debug_mode("default")
