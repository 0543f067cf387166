"""Run in a fresh process by test_fmd_memory.py: FMD's memory estimate for a config, and how much
the peak resident memory grows during one upper step. Prints both as JSON.

    python tests/fmd_memory_probe.py OVERRIDE...
"""

from __future__ import annotations

import json
import resource
import sys

import torch
from solver_harness import compose_config

from bilevel_bench import runner, tasks


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> None:
    """Set the process's peak resident memory (VmHWM) to its current value (Linux 4.0+), so that
    the peak read after the step is the step's own and not that of building the task."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_mb() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def main(overrides: list[str]) -> None:
    cfg = compose_config(*overrides, "solver=fmd", "device=cpu", "solver.max_jacobian_mb=1e9")
    device = torch.device("cpu")
    task = tasks.build_task(cfg, device, [0])
    state, solver = runner._initial_state(cfg, task, [0], device)
    estimate = solver.memory_mb(state["u"], state["v"], state["stream"])
    before = resident_mb()
    reset_peak()
    solver.step(state)
    print(json.dumps({"estimate_mb": sum(estimate.values()), "growth_mb": peak_mb() - before}))


if __name__ == "__main__":
    main(sys.argv[1:])
