"""runs=K is K single runs computed together: run k of a batch ends exactly where the runs=1 run
of that seed ends (float64, CPU), for every solver on every task; runs never mix."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from solver_harness import compose_config
from tiny_tasks import DENOISE, FEWSHOT, POISON, SMALL_CNN, epochs, steps

from bilevel_bench import runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.solvers import SOLVERS

RELATIVE = 1e-9
SEED = 3  # the batch is seeds 3, 4, 5, 6: run k of it must equal the single run of seed 3 + k

PROBLEMS = {
    "quadratic": ["dataset=quadratic", *steps(4, 2), "solver.T=3"],
    "smd20": ["dataset=smd20", *steps(4, 2), "solver.T=3"],
    "denoise_logreg": [*DENOISE, *epochs(1, 2), "model=logreg"],
    "denoise_cnn": [*DENOISE, *epochs(1, 2), *SMALL_CNN],
    "fewshot": [*FEWSHOT, *steps(3, 2)],
    "poison": [*POISON, *steps(3, 3)],
}
# the implicit family: a short linear solve keeps the cases fast
EXTRA = {name: ["solver.T2=2"] for name in ("approxgrad", "aid_cg", "stocbio", "amigo")}
# options that take other code paths inside a step (each with its solver's EXTRA)
VARIANTS = [
    ["solver=approxgrad", "solver.linsolve=cg"],
    ["solver=approxgrad", "solver.linsolve=gd"],
    ["solver=approxgrad", "solver.linsolve=neumann"],
    ["solver=rmd", "solver.truncate=1"],
    ["solver=penalty", "solver.eps0=1e9"],  # the schedule tightens at every step
    ["solver=bome", "solver.phi=value"],
    ["solver=f2sa", "solver.bound_step_lam=false"],
]


def cases(problems):
    """(overrides, id) for every solver on every problem, and the variants."""
    for problem in problems:
        for solver in sorted(SOLVERS):
            overrides = [*PROBLEMS[problem], f"solver={solver}", *EXTRA.get(solver, [])]
            if problem.startswith("denoise") and not SOLVERS[solver].updates_upper:
                overrides.append("task.fit_on=noisy")  # the erm baseline: plain training
            if problem == "fewshot" and solver == "fmd":  # dv/du of an encoder: the refusal
                overrides.append("solver.max_jacobian_mb=0.01")
            if problem == "fewshot" and SOLVERS[solver].single_lower_step:
                overrides.append("task.reset_lower=false")  # they refuse fresh heads per step
            yield pytest.param(overrides, id=f"{solver}-{problem}")
        for variant in VARIANTS:
            name = "-".join(o.split("=")[1] for o in variant)
            extra = EXTRA.get(variant[0].split("=")[1], [])
            yield pytest.param([*PROBLEMS[problem], *variant, *extra], id=f"{name}-{problem}")


def execute(overrides, seeds, tmp_path: Path):
    cfg = compose_config(*overrides, "dtype=float64", "device=cpu", f"results_dir={tmp_path}")
    runner.validate(cfg)
    torch.set_default_dtype(torch.float64)
    try:
        dirs = runner.run_dirs_for(tmp_path / f"run{seeds[0]}x{len(seeds)}", seeds)
        for directory in dirs:
            directory.mkdir(parents=True, exist_ok=True)
        return runner.execute(cfg, seeds, torch.device("cpu"), dirs)
    finally:
        torch.set_default_dtype(torch.float32)


def assert_close(batched, single, what):
    scale = max(single.abs().max().item(), 1e-30) if single.numel() else 1.0
    difference = (batched - single).abs().max().item() if single.numel() else 0.0
    assert difference <= RELATIVE * scale, f"{what}: {difference:.3g} (scale {scale:.3g})"


@pytest.mark.slow
@pytest.mark.parametrize("overrides", list(cases(sorted(PROBLEMS))))
def test_run_k_of_a_batch_equals_the_single_run_of_its_seed(tmp_path, overrides):
    seeds = [SEED + k for k in range(4)]
    try:
        batch = execute(overrides, seeds, tmp_path)
    except ConfigError as refusal:  # e.g. fmd above its memory budget: a single run refuses too
        with pytest.raises(ConfigError, match=re.escape(str(refusal)[:12])):
            execute(overrides, seeds[:1], tmp_path)
        return
    assert not batch.progress.diverged
    for k, seed in enumerate(seeds):
        single = execute(overrides, [seed], tmp_path)
        for side in ("u", "v"):
            for name, tensor in single.state[side].items():
                assert_close(batch.state[side][name][k], tensor[0], f"seed {seed} {side}.{name}")
        expected, got = single.metrics(0), batch.metrics(k)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if math.isnan(value):
                assert math.isnan(got[key]), key
            else:
                assert got[key] == pytest.approx(value, rel=RELATIVE, abs=1e-12), (seed, key)
