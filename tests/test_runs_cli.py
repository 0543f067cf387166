"""runs=K as a user meets it: K rows with the single runs' hashes, skip and resume per seed, a
diverged run frozen while the others go on, resume of every task mid-epoch."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from solver_harness import compose_config
from sweep_helpers import killed_at_the_second_checkpoint
from tiny_tasks import DENOISE, FEWSHOT, POISON, SMALL_CNN, epochs, steps

from bilevel_bench import cli, results, runner

TESTS = Path(__file__).resolve().parent


def rows(results_dir):
    return results.read_rows(Path(results_dir) / "runs.csv")


def test_runs_k_writes_one_row_per_seed_with_the_single_runs_hash(tmp_path):
    batch = runner.run(
        compose_config("runs=3", "seed=4", "task.iters=6", f"results_dir={tmp_path}"),
        tmp_path / "batch",
    )
    assert [row["seed"] for row in batch] == [4, 5, 6]
    assert all(row["runs"] == 3 and row["status"] == "ok" for row in batch)
    for row in batch:
        single = compose_config(f"seed={row['seed']}", "task.iters=6", f"results_dir={tmp_path}")
        assert row["config_hash"] == results.config_hash(single)
        assert Path(row["run_dir"]).name == f"seed{row['seed']}"
        assert (Path(row["run_dir"]) / "curve.csv").is_file()
        saved = (Path(row["run_dir"]) / ".hydra" / "config.yaml").read_text()
        assert f"seed: {row['seed']}" in saved  # the report reads each run's own config
    assert len({row["group_hash"] for row in batch}) == 1
    # the same runs alone: the same numbers (float32 here: no matrix product in smd20)
    (alone,) = runner.run(
        compose_config("seed=5", "task.iters=6", f"results_dir={tmp_path}/alone"), tmp_path / "a"
    )
    assert alone["upper_error"] == batch[1]["upper_error"] and alone["runs"] == 1


def test_a_rerun_skips_the_done_seeds_and_runs_only_the_others(tmp_path, monkeypatch, capsys):
    common = ["task.iters=4", f"results_dir={tmp_path}", "progress=false"]
    runner.run(compose_config("seed=1", *common), tmp_path / "one")
    monkeypatch.setattr(
        sys, "argv", ["bilevel-bench", "runs=3", *common, f"hydra.run.dir={tmp_path}/b"]
    )
    cli.main()
    out = capsys.readouterr().out
    assert out.count("[skipped]") == 1 and "seed=1" in out.split("[skipped]")[1].split("\n")[0]
    assert [(row["seed"], row["runs"]) for row in rows(tmp_path)] == [
        ("1", "1"),
        ("0", "2"),
        ("2", "2"),
    ]
    monkeypatch.setattr(
        sys, "argv", ["bilevel-bench", "runs=3", *common, f"hydra.run.dir={tmp_path}/c"]
    )
    cli.main()
    assert capsys.readouterr().out.count("[skipped]") == 3 and len(rows(tmp_path)) == 3


def test_a_diverged_run_is_frozen_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    cfg = compose_config(
        "task.problem._target_=sweep_helpers.DivergesPastHalf",
        "runs=4",
        "seed=2",  # u of seeds 2..5: 0.39, 0.80, -1.61, -0.49: only seed 3 passes 0.5
        "task.iters=30",
        "task.eval_every=5",
        "solver=alternating",
        f"results_dir={tmp_path}",
    )
    dirs = runner.run_dirs_for(tmp_path / "run", [2, 3, 4, 5])
    for directory in dirs:
        directory.mkdir(parents=True)
    outcome = runner.execute(cfg, [2, 3, 4, 5], torch.device("cpu"), dirs)
    assert list(outcome.progress.diverged) == [1]
    found = int(outcome.progress.diverged[1].split("at upper step ")[1])
    assert 0 < found < 30
    # frozen at the evaluation that found it: its step counter stopped there, the others ran on
    assert outcome.state["stream"]["step"].tolist() == [30, found, 30, 30]
    assert torch.isfinite(outcome.state["v"]["v"][[0, 2, 3]]).all()
    assert outcome.state["v"]["v"][0].item() == pytest.approx(0.39, abs=0.01)  # v -> u
    written = runner.run(cfg, tmp_path / "cli_run")
    assert [row["status"] for row in written] == ["ok", "diverged", "ok", "ok"]
    assert [row["upper_steps"] for row in written] == [30, found, 30, 30]
    assert "non-finite" in written[1]["error"]


TASKS = {
    # 5 steps an epoch: the checkpoints at steps 3 and 6 are mid-epoch
    "denoise_cnn": [*DENOISE, *epochs(2, 2), *SMALL_CNN],
    "fewshot": [*FEWSHOT, *steps(8, 4)],
    "poison": [*POISON, *steps(8, 4)],
}


@pytest.mark.slow
@pytest.mark.parametrize("runs", [1, 2])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, task, runs):
    common = [*TASKS[task], f"runs={runs}", "device=cpu", "progress=false"]
    reference = runner.run(
        compose_config(*common, f"results_dir={tmp_path / 'ref'}"), tmp_path / "ref"
    )
    cfg = compose_config(*common, f"results_dir={tmp_path / 'res'}", "checkpoint_every=3")
    with killed_at_the_second_checkpoint(monkeypatch) as saved:
        runner.run(cfg, tmp_path / "killed")
    assert saved == [3] and not (tmp_path / "res" / "runs.csv").exists()
    resumed = runner.run(cfg, tmp_path / "resumed")
    for before, after in zip(reference, resumed, strict=True):
        metrics = {k: v for k, v in before.items() if k not in results.PROVENANCE}
        metrics.pop("runtime_s"), metrics.pop("peak_mem_mb")
        assert {k: after[k] for k in metrics} == metrics
        curves = [pd.read_csv(Path(row["run_dir"]) / "curve.csv") for row in (before, after)]
        pd.testing.assert_frame_equal(*(curve.drop(columns="time_s") for curve in curves))
