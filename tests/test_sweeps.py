"""Sweeps at scale: concurrent result rows, resume after a kill, failing jobs, skip-if-done,
launchers (joblib and submitit_local for real), GPU claims."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from sweep_helpers import killed_at_the_second_checkpoint

from bilevel_bench import checkpoint, cli, devices, results, runner
from bilevel_bench.solvers import SOLVERS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCRIPTED = "task.problem._target_=sweep_helpers.ScriptedQuadratic"


def make_cfg(*overrides: str, config_dir: Path = CONFIGS, hydra: bool = False):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def bilevel_bench(*args: str, env_extra: dict | None = None, **kwargs) -> subprocess.Popen:
    """The CLI in a subprocess, with this folder importable (for sweep_helpers)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(env_extra or {})
    command = [sys.executable, "-m", "bilevel_bench.cli", *args, "progress=false"]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run_cli_here(monkeypatch, *args: str) -> None:
    """The CLI in this process (cheaper than a subprocess): Hydra reads sys.argv."""
    monkeypatch.setattr(sys, "argv", ["bilevel-bench", *args, "progress=false"])
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    cli.main()


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def rows(results_dir: Path) -> list[dict[str, str]]:
    return results.read_rows(results_dir / "runs.csv")


def metric_columns(row: dict) -> dict:
    return {k: row[k] for k in ("upper_loss", "lower_grad_norm", "upper_error", "upper_steps")}


def curve_without_time(run_dir) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "curve.csv").drop(columns="time_s")


# --- runs.csv under concurrency ------------------------------------------------------------------

ROWS_PER_WRITER = 50
# commas, quotes and a newline: a torn or interleaved write cannot parse back to this
PAYLOAD = 'x,"y"\nz' * 20


def _append_rows(path: str, writer: int) -> None:
    for index in range(ROWS_PER_WRITER):
        row = {"task": "concurrency", "seed": writer, "upper_steps": index, "error": PAYLOAD}
        if writer == 0 and index == ROWS_PER_WRITER // 2:
            row["extra_metric"] = 1.0  # a new column: runs.csv is rewritten while others append
        results.append_row(Path(path), row)


def test_four_processes_appending_lose_and_tear_nothing(tmp_path):
    path = tmp_path / "runs.csv"
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    writers = [context.Process(target=_append_rows, args=(str(path), w)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 4 * ROWS_PER_WRITER
    assert {(r["seed"], r["upper_steps"]) for r in read} == {
        (str(w), str(i)) for w in range(4) for i in range(ROWS_PER_WRITER)
    }
    assert all(r["error"] == PAYLOAD and r["task"] == "concurrency" for r in read)
    assert sum(r["extra_metric"] == "1.0" for r in read) == 1


# --- checkpoints and resume ----------------------------------------------------------------------


VARIANTS = [(name, ()) for name in sorted(SOLVERS)] + [
    ("penalty", ("solver.eps0=1e6",)),  # the schedule tightens at every step: it must resume too
    ("approxgrad", ("solver.linsolve=cg",)),
]


@pytest.mark.parametrize(("solver", "extra"), VARIANTS)
def test_interrupted_run_resumes_to_the_uninterrupted_result(
    tmp_path, solver, extra, monkeypatch, caplog
):
    common = [f"solver={solver}", "dataset=quadratic", "task.iters=12", "task.eval_every=4", *extra]
    common += ["device=cpu", "progress=false"]
    (reference,) = runner.run(
        make_cfg(*common, f"results_dir={tmp_path / 'ref'}"), tmp_path / "ref_run"
    )
    cfg = make_cfg(*common, f"results_dir={tmp_path / 'res'}", "checkpoint_every=5")
    with killed_at_the_second_checkpoint(monkeypatch) as saved_steps:
        runner.run(cfg, tmp_path / "killed_run")
    assert saved_steps == [5]
    (state_file,) = (tmp_path / "res" / "checkpoints").glob("*/state.pt")
    saved = torch.load(state_file, weights_only=True)
    assert saved["step"] == 5 and int(saved["state"]["stream"]["step"][0]) == 5
    assert not (tmp_path / "res" / "runs.csv").exists()

    with caplog.at_level(logging.INFO, logger="bilevel_bench.checkpoint"):
        (resumed,) = runner.run(cfg, tmp_path / "resumed_run")
    assert "at upper step 5" in caplog.text
    assert metric_columns(resumed) == metric_columns(reference)
    pd.testing.assert_frame_equal(
        curve_without_time(tmp_path / "resumed_run"), curve_without_time(tmp_path / "ref_run")
    )
    assert not state_file.exists()  # the row is written: nothing left to resume


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_numbers(tmp_path, caplog):
    args = [SCRIPTED, "task.iters=40", "task.eval_every=5", "device=cpu"]
    killed = bilevel_bench(
        *args,
        f"results_dir={tmp_path / 'res'}",
        "checkpoint_every=5",
        f"hydra.run.dir={tmp_path / 'killed_run'}",
        env_extra={"SWEEP_TEST_DELAY_S": "0.1"},  # ~0.2 s per upper step: plenty of time to kill
    )
    deadline = time.monotonic() + 90
    while not list((tmp_path / "res").glob("checkpoints/*/state.pt")):
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (state_file,) = (tmp_path / "res").glob("checkpoints/*/state.pt")
    assert 5 <= torch.load(state_file, weights_only=True)["step"] < 40
    assert not (tmp_path / "res" / "runs.csv").exists()

    sys.path.insert(0, str(ROOT / "tests"))  # the re-run happens here, and imports the problem
    try:
        (reference,) = runner.run(
            make_cfg(*args, f"results_dir={tmp_path / 'ref'}"), tmp_path / "ref_run"
        )
        with caplog.at_level(logging.INFO, logger="bilevel_bench.checkpoint"):
            (resumed,) = runner.run(
                make_cfg(*args, f"results_dir={tmp_path / 'res'}", "checkpoint_every=5"),
                tmp_path / "resumed_run",
            )
    finally:
        sys.path.remove(str(ROOT / "tests"))
    assert "resumed from" in caplog.text
    assert metric_columns(resumed) == metric_columns(reference)
    pd.testing.assert_frame_equal(
        curve_without_time(tmp_path / "resumed_run"), curve_without_time(tmp_path / "ref_run")
    )


def test_unreadable_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
    cfg = make_cfg("dataset=quadratic", "task.iters=6", "device=cpu", f"results_dir={tmp_path}")
    cfg.checkpoint_every = 2
    saver = checkpoint.Checkpoint.for_run(cfg, results.batch_key(cfg, [0]))
    saver.path.parent.mkdir(parents=True)
    saver.path.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="bilevel_bench.checkpoint"):
        (row,) = runner.run(cfg, tmp_path / "run")
    assert row["status"] == "ok" and row["upper_steps"] == 6
    assert "ignoring unreadable checkpoint" in caplog.text


# --- failures ------------------------------------------------------------------------------------


def test_out_of_memory_is_recorded_as_failed(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        cfg = make_cfg(SCRIPTED, "+task.problem.mode=oom", "device=cpu", f"results_dir={tmp_path}")
        with pytest.raises(torch.cuda.OutOfMemoryError):
            runner.run(cfg, tmp_path / "run")
    finally:
        sys.path.remove(str(ROOT / "tests"))
    (row,) = rows(tmp_path)
    assert row["status"] == "failed" and row["error"].startswith("OutOfMemoryError: CUDA out of")


@pytest.mark.slow
def test_sweep_with_failing_jobs_finishes_the_others_and_exits_nonzero(tmp_path):
    """joblib for real: one job raises, one diverges (NaN), one is fine."""
    code, output = finish(
        bilevel_bench(
            "-m",
            "launcher=joblib",
            "hydra.launcher.n_jobs=2",
            SCRIPTED,
            "+task.problem.mode=raise,ok,diverge",
            "task.iters=10",
            "task.eval_every=5",
            "device=cpu",
            f"results_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        )
    )
    assert code == 1, output
    by_status = {row["status"]: row for row in rows(tmp_path)}
    assert sorted(by_status) == ["diverged", "failed", "ok"], output
    assert by_status["failed"]["error"] == "RuntimeError: deliberate failure in g"
    assert "non-finite" in by_status["diverged"]["error"]
    assert by_status["ok"]["upper_steps"] == "10"


def test_single_failed_run_exits_nonzero(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli_here(
            monkeypatch,
            SCRIPTED,
            "+task.problem.mode=raise",
            "device=cpu",
            f"results_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    assert exit_info.value.code == 1
    assert "deliberate failure in g" in capsys.readouterr().err
    assert [row["status"] for row in rows(tmp_path)] == ["failed"]
    assert "RuntimeError: deliberate failure in g" in (tmp_path / "run" / "error.txt").read_text()


# --- skip if done, force -------------------------------------------------------------------------


@pytest.mark.slow
def test_submitit_local_sweep_then_rerun_skips_done_jobs(tmp_path, monkeypatch, capsys):
    sweep = ["-m", "seed=0,1", "task.iters=5", "device=cpu", f"results_dir={tmp_path}"]
    code, output = finish(
        bilevel_bench(*sweep, "launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 's1'}")
    )
    assert code == 0, output
    assert sorted(row["seed"] for row in rows(tmp_path)) == ["0", "1"]
    assert all(row["status"] == "ok" for row in rows(tmp_path))

    run_cli_here(monkeypatch, *sweep, f"hydra.sweep.dir={tmp_path / 's2'}")  # no SystemExit: 0
    assert capsys.readouterr().out.count("[skipped]") == 2
    assert len(rows(tmp_path)) == 2


def test_force_reruns_a_done_config(tmp_path):
    cfg = make_cfg("dataset=quadratic", "task.iters=3", "device=cpu", f"results_dir={tmp_path}")
    assert cli.already_done(cfg) == []
    (row,) = runner.run(cfg, tmp_path / "run")
    assert [done["config_hash"] for done in cli.already_done(cfg)] == [row["config_hash"]]
    cfg.force = True
    assert cli.already_done(cfg) == []
    cfg.seed = 1  # another config: not done
    cfg.force = False
    assert cli.already_done(cfg) == []


# --- launchers and devices -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launcher_configs_compose_and_leave_the_config_hash_alone(launcher, target):
    pytest.importorskip(target.rsplit(".", 2)[0], reason=f"pip install 'bilevel-bench[{launcher}]'")
    assert make_cfg(f"launcher={launcher}", hydra=True).hydra.launcher._target_ == target
    assert results.config_hash(make_cfg(f"launcher={launcher}")) == results.config_hash(make_cfg())


def test_ray_launcher_config_composes():
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher",
        reason="hydra-ray-launcher (and ray) not installed: pip install 'bilevel-bench[ray]'",
    )
    cfg = make_cfg("launcher=ray", hydra=True)
    assert cfg.hydra.launcher.ray.remote.num_gpus == 1


def test_slurm_keys_and_git_ignored_site_override(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    configs = shutil.copytree(CONFIGS, tmp_path / "configs")
    (configs / "local" / "slurm.yaml").write_text(
        "# @package _global_\nslurm:\n  partition: site-gpu\n"
        "hydra:\n  launcher:\n    account: site-account\n"
    )
    cfg = make_cfg("launcher=slurm", "slurm.time_min=30", config_dir=configs, hydra=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.account) == ("site-gpu", "site-account")
    assert (launcher.timeout_min, launcher.gpus_per_node) == (30, 1)
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "configs/local/slurm.yaml"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "configs/local/ must be ignored by git"


def test_concurrent_jobs_never_claim_the_same_gpu(tmp_path):
    ids = ["GPU-a", "GPU-b"]
    with devices.claim_slot(ids, job_num=0, directory=tmp_path) as first:
        with devices.claim_slot(ids, job_num=0, directory=tmp_path) as second:
            assert {first, second} == {0, 1}
    with devices.claim_slot(ids, job_num=3, directory=tmp_path) as preferred:
        assert preferred == 1  # job 3 on 2 GPUs starts at GPU 3 mod 2


def test_a_job_waits_while_every_gpu_is_held(tmp_path):
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    with devices.claim_slot(["GPU-only"], job_num=0, directory=tmp_path):
        waiter = context.Process(target=_claim_once, args=(tmp_path,))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # blocked on the held GPU
    waiter.join(timeout=30)
    assert waiter.exitcode == 0


def _claim_once(directory: Path) -> None:
    with devices.claim_slot(["GPU-only"], job_num=0, directory=directory, poll_s=0.05):
        pass


def test_auto_device_on_a_cpu_machine_needs_no_claim(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with devices.claim("auto", job_num=5) as device:
        assert device == torch.device("cpu")
    with pytest.raises(runner.checks.ConfigError, match="device=cuda"):
        with devices.claim("cuda"):
            pass
