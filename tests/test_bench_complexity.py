"""scripts/bench_complexity.py --quick: runs end to end and shows RMD's memory growing with T."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_csv_and_png_and_rmd_memory_grows_with_T(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_complexity.py"),
            "--quick",
            "--solvers",
            "rmd",
            "penalty",
            "--sweeps",
            "T",
            "sgd_ratio",
            "--out-dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    frame = pd.read_csv(tmp_path / "complexity.csv")
    assert (tmp_path / "complexity.png").read_bytes()[:4] == b"\x89PNG"
    memory = frame[frame["sweep"] == "T"].set_index(["solver", "T"])["peak_mem_mb"]
    shortest, longest = frame["T"].min(), frame["T"].max()
    # RMD keeps every unrolled iterate (quick mode: 1024 x 64 activations, ~1 MB per step);
    # the penalty method keeps none, so its peak does not grow with T.
    rmd_growth = memory["rmd", longest] - memory["rmd", shortest]
    penalty_growth = memory["penalty", longest] - memory["penalty", shortest]
    assert rmd_growth > 5.0
    assert rmd_growth > 3 * max(penalty_growth, 1.0)
    ratio = frame.loc[frame["sweep"] == "sgd_ratio", "ratio_to_sgd"]
    assert len(ratio) == 1 and ratio.iloc[0] > 0
    assert frame["device"].str.startswith("cpu").all()
