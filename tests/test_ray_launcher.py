"""The Ray launcher path for real (issue 14): a two-job sweep on a local Ray instance writes both
rows. Skipped where ray is not installed (pip install 'bilevel-bench[ray]')."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bilevel_bench import results

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_two_job_sweep_on_a_local_ray_instance_writes_both_rows(tmp_path):
    pytest.importorskip("ray", reason="ray not installed: pip install 'bilevel-bench[ray]'")
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher", reason="pip install 'bilevel-bench[ray]'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)  # a fresh local instance, never a cluster this machine knows
    done = subprocess.run(
        [
            sys.executable, "-m", "bilevel_bench.cli", "-m", "launcher=ray",
            # CPU jobs of one core each, so that both fit on a small machine at once
            "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
            "+hydra.launcher.ray.init.num_cpus=2", "seed=0,1", "task.iters=5", "device=cpu",
            "progress=false", f"results_dir={tmp_path / 'res'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = results.read_rows(tmp_path / "res" / "runs.csv")
    assert sorted(row["seed"] for row in rows) == ["0", "1"]
    assert all(row["status"] == "ok" and row["upper_steps"] == "5" for row in rows)
    assert {Path(row["run_dir"]).parent for row in rows} == {tmp_path / "sweep"}
