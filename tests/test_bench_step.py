"""scripts/bench_step.py runs end to end on a tiny batch and writes one row per network x solver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def test_bench_step_writes_a_ratio_per_solver(tmp_path):
    out = tmp_path / "bench_step.csv"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_step.py"), "--repeats", "1",
         "--batch", "2", "--models", "mnist_cnn", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(out)
    assert list(frame["solver"]) == ["penalty", "approxgrad", "rmd"]
    assert (frame["sgd_step_s"] > 0).all() and (frame["upper_step_T1_s"] > 0).all()
    # ratios are reported, never asserted (timing belongs in the benchmark, not in tests)
    ratios = ["inner_ratio", "solve_ratio", "fixed_ratio", "amortized_ratio_T20"]
    assert np.isfinite(frame[ratios].to_numpy()).all()
    assert frame["device"].str.startswith("cpu").all()
