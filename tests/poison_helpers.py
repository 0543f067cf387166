"""Shared pieces of the poisoning tests: small generated configs, one-thread torch, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "MNIST" / "raw"

# a small generated problem: 8x8 images, 60 train / 60 val / 100 test, 6 poisons
FAKE_LINEAR = [
    "task=poison",
    "dataset=fake_poison",
    "device=cpu",
    "task.num_poisons=6",
    "task.split.train=60",
    "task.split.val=60",
    "task.split.test=100",
    "task.iters=3",
    "task.eval_every=3",
    "task.pretrain.steps=20",
    "task.pretrain.lr=0.05",
    "task.retrain.steps=30",
    "task.retrain.lr=0.05",
    "solver.T=3",
]


def compose_config(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"results_dir={tmp_path}/results"])


def run_cli(args, tmp_path, cache=None, timeout=240) -> subprocess.CompletedProcess:
    """`bilevel-bench ARGS` in a subprocess on one thread (the machine is shared)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "BILEVEL_BENCH_CACHE": str(cache or tmp_path / "cache"),
    }
    command = [
        sys.executable,
        "-m",
        "bilevel_bench.cli",
        *args,
        f"results_dir={tmp_path}/results",
        f"hydra.run.dir={tmp_path}/run",
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def read_runs(tmp_path) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "results" / "runs.csv")


class one_thread:
    """Context manager: torch on one thread (2 shared cores; more threads only contend)."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
