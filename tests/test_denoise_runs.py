"""The denoising task end to end: every solver and baseline on `fake`, the memory refusal of
fmd on a CNN, config errors, and (when ../shared/data/MNIST exists) a short real MNIST run."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from denoise_helpers import TINY, run
from solver_harness import SHARED_DATA, compose_config

from bilevel_bench import keys, runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks import build_task

BILEVEL = sorted(set(SOLVERS) - {"erm"})


@pytest.mark.parametrize("solver", BILEVEL)
def test_every_bilevel_solver_learns_weights_on_fake(tmp_path, solver):
    row = run(tmp_path, [*TINY, f"solver={solver}"])
    assert row["status"] == "ok", row.get("error")
    assert row["task"] == "denoise" and row["dataset"] == "fake"
    for key in ("test_acc", "retrain_test_acc", "detect_f1", "weight_auroc"):
        assert 0 <= row[key] <= 100, key
    assert row["upper_steps"] == 2  # 1 epoch: 600 - 100 validation = 500 examples, batch 200
    curve = list(csv.DictReader(open(tmp_path / "run" / "curve.csv")))
    assert {"test_acc", "detect_precision", "detect_recall", "weight_auroc"} <= set(curve[0])


@pytest.mark.parametrize("fit_on", ["noisy", "val", "noisy+val", "clean", "clean+val"])
def test_erm_baselines_train_on_the_chosen_data(tmp_path, fit_on):
    overrides = [*TINY, "solver=erm", f"task.fit_on={fit_on}", "task.epochs=3", "solver.lr_v=0.02"]
    row = run(tmp_path, overrides)
    assert row["status"] == "ok", row.get("error")
    assert row["dataset"] == "fake"  # no label folded into the dataset: a column of its own
    assert row["baseline"] == {"noisy": "noisy", "val": "val_only", "noisy+val": "train_val",
                               "clean": "clean_only", "clean+val": "oracle"}[fit_on]  # fmt: skip
    assert row["test_acc"] > 30  # 10 classes: well above chance after 3 epochs
    assert "weight_auroc" not in row or row["weight_auroc"] is None  # no weights learned


def test_clean_training_set_runs_without_detection_metrics(tmp_path):
    row = run(tmp_path, [*TINY, "solver=penalty", "task.noise=0"])
    assert row["status"] == "ok", row.get("error")
    assert row.get("weight_auroc") is None  # undefined without noisy examples, not NaN


def test_the_papers_baselines_are_named_presets():
    for name, fit_on in (("oracle", "clean+val"), ("val_only", "val"), ("train_val", "noisy+val")):
        cfg = compose_config("experiment=denoise_mnist", f"baseline={name}")
        assert (cfg.solver.name, cfg.task.fit_on) == ("erm", fit_on)
        assert cfg.solver.lr_v == 1e-5  # App. E.2's MNIST recipe


def test_baselines_are_refused_for_bilevel_solvers(tmp_path):
    with pytest.raises(ConfigError, match="optimises upper variables, but this problem has none"):
        run(tmp_path, [*TINY, "solver=penalty", "task.fit_on=val"])


def test_fmd_refuses_a_cnn_with_its_memory_estimate(tmp_path):
    overrides = [*TINY, "solver=fmd", "model=mnist_cnn", "dataset.size=28"]
    with pytest.raises(ConfigError, match=r"fmd needs about [\d,]+ MB .*solver.max_jacobian_mb"):
        run(tmp_path, overrides)


def test_cli_runs_a_baseline_and_appends_a_row(tmp_path):
    command = [sys.executable, "-m", "bilevel_bench.cli", *TINY, "solver=erm",
               "task.fit_on=clean", f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "model logreg: 1,450 parameters" in done.stdout
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert rows[0]["solver"] == "erm" and rows[0]["status"] == "ok"


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").is_dir(), reason="needs ../shared/data/MNIST")
def test_penalty_weights_separate_noisy_mnist_labels(tmp_path):
    """Weights start uniform (no agreement init), so any separation is the solver's doing."""
    row = run(
        tmp_path,
        [
            "experiment=denoise_mnist_small", "solver=penalty", f"data.root={SHARED_DATA}",
            "dataset.train_size=1000", "dataset.val_size=1000", "task.epochs=3",
            "task.eval_every=15", "task.pretrain_epochs=10", "task.pretrain_lr=1e-3",
            "task.init_from_agreement=false",
            "task.retrain=false", "progress=false",
        ],
    )  # fmt: skip
    assert row["status"] == "ok", row.get("error")
    assert row["weight_auroc"] > 0.65


@pytest.mark.parametrize("optimizer_u, off_batch_moves", [("sparse_adam", False), ("adam", True)])
def test_lazy_adam_moves_only_the_weights_of_the_current_batch(optimizer_u, off_batch_moves):
    """Per-example weights: dense Adam keeps moving examples off-batch on stale momentum;
    solver.optimizer_u=sparse_adam (lazy Adam) moves only the examples in the minibatch."""
    cfg = compose_config(*TINY, "solver=penalty", f"solver.optimizer_u={optimizer_u}",
                         "task.batch_size=50", "task.renormalize=false")  # fmt: skip
    task = build_task(cfg, torch.device("cpu"), [0])
    state, solver = runner._initial_state(cfg, task, [0], torch.device("cpu"))
    _, first_batch = task.problem.sample_batches(state["stream"])
    state, _ = solver.step(state)  # batch 1: momentum for its 50 examples
    first = state["u"]["logits"].clone()
    _, second_batch = task.problem.sample_batches(state["stream"])
    state, _ = solver.step(state)  # batch 2: a disjoint set of 50 examples (same pool pass)
    batch_one = first_batch.positions[0]
    assert not set(batch_one.tolist()) & set(second_batch.positions[0].tolist())
    moved = (state["u"]["logits"] - first)[0, batch_one].abs().max()
    assert bool(moved > 0) is off_batch_moves


def test_batches_walk_through_a_fresh_permutation_of_the_pool_each_pass():
    cfg = compose_config(*TINY, "solver=penalty", "task.batch_size=100")
    task = build_task(cfg, torch.device("cpu"), [0, 1])
    problem, pool_size = task.problem, task.problem.pool.index.shape[1]
    passes = []
    for first_step in (0, pool_size // 100):
        seen = []
        for step in range(first_step, first_step + pool_size // 100):
            stream = {"key": keys.run_keys([0, 1]), "step": torch.tensor([step, step])}
            upper, lower = problem.sample_batches(stream)
            seen.append(lower.positions)
            assert len(set(upper.positions[0].tolist())) == upper.positions.shape[1]
        passes.append(torch.cat(seen, 1))
    for one_pass in passes:  # every example once per pass, in each run
        assert all(sorted(run.tolist()) == list(range(pool_size)) for run in one_pass)
    assert not torch.equal(passes[0], passes[1])  # a new order in the next pass
    assert not torch.equal(passes[0][0], passes[0][1])  # and each run its own order


@pytest.mark.parametrize("fit_on", ["clean", "clean+val"])
def test_oracles_train_on_true_labels_only(fit_on):
    cfg = compose_config(*TINY, "solver=erm", f"task.fit_on={fit_on}", "task.noise=0.5")
    task = build_task(cfg, torch.device("cpu"), [0, 1])
    pool, data = task.problem.pool, task.problem.data
    for k in range(2):
        n_clean = int((~task.is_noisy[k]).sum())
        expected = n_clean + (data.val_index.shape[1] if fit_on == "clean+val" else 0)
        assert pool.index.shape[1] == expected
        # no corrupted label reaches the oracle: every pool label is the image's true label
        assert torch.equal(pool.labels[k], data.labels[pool.index[k]])
