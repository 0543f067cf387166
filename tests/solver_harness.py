"""Test harness: compose the real Hydra configs, run solvers directly on problems."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bilevel_bench.cli import config_dir
from bilevel_bench.solvers import SOLVERS

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def solver_config(name: str, **params):
    """The solver's shipped defaults (configs/solver/NAME.yaml) with `params` on top."""
    cfg = compose_config(f"solver={name}").solver
    return OmegaConf.merge(cfg, params)


def run_solver(problem, name: str, steps: int, seed: int = 0, u=None, v=None, **params):
    """Run `steps` upper steps of a solver on a problem; returns (u, v, solver)."""
    generator = torch.Generator().manual_seed(seed)
    u0, v0 = problem.init_variables(generator)
    u = {k: t.detach().clone().requires_grad_() for k, t in (u or u0).items()}
    v = {k: t.detach().clone().requires_grad_() for k, t in (v or v0).items()}
    cfg = solver_config(name, **params)
    cls = SOLVERS[name]
    cls.validate(cfg)
    solver = cls(problem, u, v, cfg, generator)
    for _ in range(steps):
        solver.step()
    return u, v, solver
