"""Test harness: compose the real Hydra configs, run solvers directly on problems."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bilevel_bench import keys
from bilevel_bench.cli import config_dir
from bilevel_bench.problem import batched
from bilevel_bench.solvers import SOLVERS

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def solver_config(name: str, **params):
    """The solver's defaults for the default task (declared + tuned) with `params` on top."""
    cfg = compose_config(f"solver={name}").solver
    return OmegaConf.merge(cfg, params)


def stream(seeds, device="cpu"):
    return {
        "key": keys.run_keys(list(seeds), device),
        "step": torch.zeros(len(seeds), dtype=torch.int64, device=device),
    }


def make_solver(problem, name: str, seeds=(0,), u=None, v=None, **params):
    """(solver, initial state) for a problem (one-run or batched) and the given seeds.

    u / v: one run's variables to start every run from (default: the problem's own init)."""
    problem = batched(problem)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    u0, v0 = problem.init_variables(generators)
    if u is not None:
        u0 = {k: t.detach().clone().expand(len(seeds), *t.shape).clone() for k, t in u.items()}
    if v is not None:
        v0 = {k: t.detach().clone().expand(len(seeds), *t.shape).clone() for k, t in v.items()}
    cfg = solver_config(name, **params)
    cls = SOLVERS[name]
    cls.validate(cfg)
    cls.check_problem(u0, v0)
    solver = cls(problem, cfg)
    return solver, solver.init(u0, v0, stream(seeds, next(iter(v0.values())).device))


def run_solver(problem, name: str, steps: int, seed: int = 0, u=None, v=None, **params):
    """Run `steps` upper steps of one run; returns (u, v, state) with u, v of that run."""
    solver, state = make_solver(problem, name, (seed,), u, v, **params)
    for _ in range(steps):
        state, _ = solver.step(state)
    first = lambda d: {k: t[0] for k, t in d.items()}  # noqa: E731
    return first(state["u"]), first(state["v"]), state


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run scripts/<name> with this interpreter on one thread, the checkout importable."""
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
