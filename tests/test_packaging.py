"""A regular (non-editable) wheel carries the Hydra configs and runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from solver_harness import REPO


@pytest.mark.slow
def test_wheel_ships_configs_and_runs(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("bilevel_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bilevel_bench/configs/config.yaml" in names
    assert "bilevel_bench/configs/tuned/synthetic.yaml" in names
    # solvers are discovered modules, their configs generated from their declarations
    assert "bilevel_bench/solvers/rmd.py" in names
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "bilevel-bench = bilevel_bench.cli:main" in entry_points
    assert "bilevel-bench-report = bilevel_bench.report:main" in entry_points

    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    # PYTHONPATH puts the installed wheel ahead of any editable checkout of the project.
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import bilevel_bench.cli as c; print(c.config_dir())"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.stdout.strip() == str(target / "bilevel_bench" / "configs"), where.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bilevel_bench.cli",
            "task.iters=3",
            "solver=rmd",
            "dataset=smd24",
            f"results_dir={workdir}/results",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "[ok] synthetic/smd24 solver=rmd" in run.stdout
    assert (workdir / "results" / "runs.csv").exists()
