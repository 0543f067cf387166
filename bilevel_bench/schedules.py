"""Schedules held in the solver state: one value per run, advanced once per upper step.

A schedule is a dict of float64 [K] tensors, so a checkpoint carries it (a resumed run continues
where it stopped) and reading its value never synchronises with the device:
- `decay(runs, device, c, a)`: c / (t + 1)^a, with a = 0 a constant (F2SA's and SOBA's steps);
- `ramp(runs, device, start, end, steps)`: linear from start to end over `steps` advances,
  then end (V-PBGD's penalty gamma).
t counts the schedule's own advances, starting at 0.
"""

from __future__ import annotations

import torch

Schedule = dict[str, torch.Tensor]


def _full(runs: int, device, value: float) -> torch.Tensor:
    return torch.full((runs,), float(value), dtype=torch.float64, device=device)


def decay(runs: int, device, scale: float, power: float = 0.0) -> Schedule:
    return {
        "scale": _full(runs, device, scale),
        "power": _full(runs, device, power),
        "t": _full(runs, device, 0.0),
    }


def ramp(runs: int, device, start: float, end: float, steps: int) -> Schedule:
    return {
        "start": _full(runs, device, start),
        "end": _full(runs, device, end),
        "steps": _full(runs, device, steps),
        "t": _full(runs, device, 0.0),
    }


def value(schedule: Schedule) -> torch.Tensor:
    """[K] float64: the value at the current t (the kind is read from the keys, not values)."""
    t = schedule["t"]
    if "power" in schedule:
        return schedule["scale"] / (t + 1) ** schedule["power"]
    steps = schedule["steps"]
    # steps = 0 means no ramp: the end value from the start
    fraction = torch.where(steps > 0, (t / steps.clamp(min=1)).clamp(max=1), torch.ones_like(t))
    return schedule["start"] + (schedule["end"] - schedule["start"]) * fraction


def advance(schedule: Schedule) -> Schedule:
    return {**schedule, "t": schedule["t"] + 1}


def runs_of(variables) -> tuple[int, torch.device]:
    """(K, device) of a dict of [K, ...] tensors: what a schedule is built for."""
    first = next(iter(variables.values()))
    return first.shape[0], first.device
