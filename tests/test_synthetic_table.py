"""The committed synthetic table (results/synthetic/runs.csv, README) reproduces: every run of
every cell, recomputed with the command that made it (runs=5 per solver and problem), gives
its committed upper_error to 1e-6."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from solver_harness import REPO, compose_config

from bilevel_bench import results, runner

COMMITTED = pd.read_csv(REPO / "results" / "synthetic" / "runs.csv")
CELLS = sorted(set(zip(COMMITTED["solver"], COMMITTED["dataset"], strict=True)))
MADE_WITH = COMMITTED["torch"].iloc[0]


@pytest.mark.slow
@pytest.mark.skipif(
    torch.__version__ != MADE_WITH,
    reason=f"the table was computed with torch {MADE_WITH}; float32 rounding differs between "
    f"releases (this is {torch.__version__})",
)
@pytest.mark.parametrize("solver, dataset", CELLS)
def test_the_committed_synthetic_table_reproduces(tmp_path, solver, dataset):
    committed = COMMITTED[(COMMITTED["solver"] == solver) & (COMMITTED["dataset"] == dataset)]
    seeds = sorted(committed["seed"])
    assert seeds == list(range(5)) and set(committed["runs"]) == {5}
    cfg = compose_config(
        f"solver={solver}", f"dataset={dataset}", "runs=5", "device=cpu", "progress=false",
        f"results_dir={tmp_path}",
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the committed sweep (OMP_NUM_THREADS=1)
    try:
        rows = runner.run(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    for row in rows:
        expected = committed[committed["seed"] == row["seed"]].iloc[0]
        assert (
            row["config_hash"] == expected["config_hash"] == results.config_hash(cfg, row["seed"])
        )
        assert row["upper_error"] == pytest.approx(expected["upper_error"], rel=1e-6, abs=1e-12)
