"""Failure paths as a user meets them (issue 14): no result is lost, no message says what did not
happen, user errors are one short line with exit code 2, and Hydra leaves no empty folders.
Items 4 and 14 (the report tool) are in test_report_bad_input.py, 7 in test_fmd_memory.py, the
Ray launcher in test_ray_launcher.py."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from solver_harness import compose_config

from bilevel_bench import cli, results, runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.data import cache, omniglot
from bilevel_bench.data.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
SCRIPTED = "task.problem._target_=sweep_helpers.ScriptedQuadratic"
MAX_LINES = 15  # of output for any user error


def bilevel_bench(
    *args: str, cwd: Path, env_extra: dict | None = None, **popen
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(env_extra or {})
    command = [sys.executable, "-m", "bilevel_bench.cli", *args, "progress=false"]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    process = bilevel_bench(*args, cwd=cwd)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def user_error(done: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """The contract for a user error: exit 2 (a config or data error; 1 for a run that failed),
    a short message with every fragment, no traceback."""
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert len(output.splitlines()) < MAX_LINES, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output
    return output


def rows(results_dir: Path) -> list[dict[str, str]]:
    return results.read_rows(results_dir / "runs.csv")


# --- 1, 5: results_dir and runs.csv are checked before any work --------------------------------


def test_results_dir_that_is_a_file_stops_before_any_work(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    done = run_cli("task.iters=5", f"results_dir={tmp_path / 'file'}", cwd=tmp_path)
    output = user_error(done, "results_dir=", "is a file, not a folder")
    assert "appended" not in output and "error.txt" not in output  # nothing false claimed
    assert not (tmp_path / "outputs").exists()  # and no empty Hydra folder (item 15)


def test_read_only_results_dir_stops_before_any_work(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    elif Path("/sys/kernel").is_dir():  # root writes into any folder, but not into sysfs
        folder = Path("/sys/bilevel-bench-results")
    else:
        pytest.skip("root, and no sysfs to stand for a read-only folder")
    try:
        done = run_cli("task.iters=5", f"results_dir={folder}", cwd=tmp_path)
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(stat.S_IRWXU)
    output = user_error(done, f"results_dir={folder} is not writable")
    assert "appended" not in output and "error.txt" not in output
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("task,dataset,solver,seed,status,config_hash\na,b,c,0,ok\n", ["line 2", "5 fields"]),
        ('task,dataset,solver,seed,status,config_hash\na,"b,c,0,ok,h\n', ["line 2"]),
        ("step,loss\n1,0.5\n", ["not written by bilevel-bench"]),  # item 5: another tool's file
        ("task,status\n\x00\x01\x02\n", ["binary"]),
    ],
    ids=["ragged", "unclosed-quote", "foreign", "binary"],
)
def test_a_runs_csv_that_cannot_be_appended_to_is_refused_and_left_alone(
    tmp_path, content, fragments
):
    runs_csv = tmp_path / "res" / "runs.csv"
    runs_csv.parent.mkdir()
    runs_csv.write_text(content)
    done = run_cli("task.iters=5", f"results_dir={runs_csv.parent}", cwd=tmp_path)
    user_error(done, str(runs_csv), *fragments)
    assert runs_csv.read_text() == content  # never rewritten


def test_a_broken_runs_csv_is_never_rewritten_when_a_new_column_arrives(tmp_path):
    runs_csv = tmp_path / "runs.csv"
    results.append_row(runs_csv, results.new_row(task="a", seed=0))
    with open(runs_csv, "a") as handle:
        handle.write("torn,row\n")
    before = runs_csv.read_text()
    with pytest.raises(results.RunsCsvError, match=r"runs\.csv, line 3: 2 fields"):
        results.append_row(runs_csv, results.new_row(task="b", seed=1, extra_metric=1.0))
    assert runs_csv.read_text() == before


def _fail_to_append(path, row):
    raise PermissionError(13, "Permission denied", str(path))


def test_a_late_write_failure_says_exactly_what_was_and_was_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "append_row", _fail_to_append)
    cfg = compose_config("task.iters=5", f"results_dir={tmp_path / 'res'}", "device=cpu")
    with pytest.raises(runner.RecordError) as raised:
        runner.run(cfg, tmp_path / "run")
    message = str(raised.value)
    assert "ended ok" in message and "runs.csv row NOT written" in message
    assert "PermissionError" in message and "result.json" in message and "curve.csv" in message
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "ok"
    assert not (tmp_path / "res" / "runs.csv").exists()


def test_the_cli_never_claims_a_row_it_could_not_write(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "append_row", _fail_to_append)
    args = ["task.iters=5", "device=cpu", f"results_dir={tmp_path / 'res'}"]
    monkeypatch.setattr(sys, "argv", ["bilevel-bench", *args, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "runs.csv row NOT written" in captured.err and "appended" not in captured.out
    assert len((captured.out + captured.err).splitlines()) < MAX_LINES


# --- 3: sweep and run folders are unique ---------------------------------------------------------


@pytest.mark.slow
def test_two_sweeps_started_together_get_their_own_folders(tmp_path):
    sweeps = [
        bilevel_bench(
            "-m",
            f"seed={seed}",
            "task.iters=3",
            "device=cpu",
            f"results_dir={tmp_path}",
            cwd=tmp_path,
        )  # fmt: skip
        for seed in (0, 1)
    ]
    for process in sweeps:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, out + err
    run_dirs = [row["run_dir"] for row in rows(tmp_path)]
    assert len(run_dirs) == 2 and len(set(run_dirs)) == 2
    assert len(list((tmp_path / "multirun").glob("*/*"))) == 2  # two sweep folders
    for run_dir in run_dirs:
        assert json.loads((Path(run_dir) / "result.json").read_text())["run_dir"] == run_dir


# --- 6: permissions and links ------------------------------------------------------------------


def test_files_keep_the_umask_the_file_mode_and_links(tmp_path):
    previous = os.umask(0o022)
    try:
        cfg = compose_config(
            "task.iters=6", "checkpoint_every=2", "device=cpu", f"results_dir={tmp_path / 'res'}"
        )
        saver = runner.Checkpoint.for_run(cfg, results.batch_key(cfg, [0]))
        saved_modes = []
        real_save = runner.Checkpoint.save

        def save_and_look(self, state, progress):
            real_save(self, state, progress)
            saved_modes.append(stat.S_IMODE(saver.path.stat().st_mode))

        runner.Checkpoint.save = save_and_look
        try:
            runner.run(cfg, tmp_path / "run")
        finally:
            runner.Checkpoint.save = real_save
        mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
        assert saved_modes and set(saved_modes) == {0o644}  # state.pt
        assert mode(tmp_path / "res" / "runs.csv") == 0o644
        assert mode(tmp_path / "run" / "result.json") == 0o644

        shared = tmp_path / "shared" / "runs.csv"  # a group-readable file, reached by a link
        results.append_row(shared, results.new_row(task="a", seed=0))
        shared.chmod(0o640)
        link = tmp_path / "linked" / "runs.csv"
        link.parent.mkdir()
        link.symlink_to(shared)
        results.append_row(link, results.new_row(task="b", seed=1, extra_metric=2.0))  # rewrite
        assert link.is_symlink() and mode(shared) == 0o640
        assert [row["task"] for row in results.read_rows(shared)] == ["a", "b"]
    finally:
        os.umask(previous)


# --- 8, 13: Hydra's own config errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("launcher=sbmitit_local", ["Could not find 'launcher/sbmitit_local'", "submitit_local"]),
        # a dozen solvers: Hydra prints one per line, the CLI lists them on one
        ("solver=penalti", ["Could not find 'solver/penalti'", "penalty; rmd"]),
    ],
)
def test_a_misspelt_group_option_stops_with_hydras_list_of_options(tmp_path, override, fragments):
    done = run_cli(override, f"results_dir={tmp_path}", cwd=tmp_path)
    output = user_error(done, "config error", "Available options in", *fragments)
    assert len(output.splitlines()) <= 5, output
    assert not (tmp_path / "runs.csv").exists() and not (tmp_path / "outputs").exists()


def test_an_unknown_solver_key_is_a_config_error(tmp_path):
    done = run_cli("+solver.lr_uu=1", f"results_dir={tmp_path}", cwd=tmp_path)
    user_error(done, "solver.lr_uu is not a hyper-parameter of solver=penalty")


def test_a_key_added_with_plus_that_nothing_reads_is_a_config_error(tmp_path):
    done = run_cli("+task.iterz=5", f"results_dir={tmp_path}", cwd=tmp_path)
    user_error(done, "+task.iterz=5 adds task.iterz, which bilevel-bench does not read",
               "task has name, iters, eval_every, problem")  # fmt: skip
    assert not (tmp_path / "runs.csv").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["+foo=1"], "the top-level keys are"),
        (["task=denoise", "dataset=fake", "+dataset.bar=1"], "dataset has name, n_classes"),
        # a built-in problem is built from dataset.*: task.problem.* would be ignored
        (["+task.problem.dim=3"], "read once task.problem._target_ names a class"),
        (["task.problem._target_=failure_helpers.Quadratic3", "+task.problem.n=1"], None),
        (["+solver.lr_uu=1"], None),  # runner.validate names the solver's keys
        (["+tuned.penalty.lr=1"], None),  # and those of configs/tuned
        (["task=fewshot", "dataset=omniglot", "+dataset.characters=3"], None),  # read when set
        (["+hydra.job.env_set.X=1"], None),
    ],
)
def test_which_keys_added_with_plus_are_refused(overrides, refused):
    cfg = compose_config(*(o for o in overrides if not o.startswith("+hydra.")))
    if refused is None:
        cli.check_added_keys(cfg, overrides)
    else:
        with pytest.raises(ConfigError, match=refused):
            cli.check_added_keys(cfg, overrides)


# --- 2, 9: values that must not pass ---------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("device=cpux", "device='cpux' is not auto, cpu, cuda or cuda:N"),
        ("solver.lr_u=inf", "solver.lr_u must be a finite number"),
        ("solver.lr_v=nan", "solver.lr_v must be a finite number"),
        ("results_dir='~/x'", "results_dir='~/x' starts with '~'"),
        ("seed=12345678901234567890",
         "seed=12345678901234567890 with runs=1: every seed must be below 2**31"),
        ("task.problem._target_=failure_helpers.Float64Variables",
         "the problem created variable 'u' as torch.float64, but dtype=float32"),
    ],
)  # fmt: skip
def test_values_that_would_crash_or_mislead_are_refused(tmp_path, override, message):
    results_dir = [] if override.startswith("results_dir") else [f"results_dir={tmp_path / 'r'}"]
    done = run_cli(override, "dtype=float32", "task.iters=2", *results_dir, cwd=tmp_path)
    output = user_error(done, f"config error: {message}")
    assert "appended" not in output
    assert not (tmp_path / "r" / "runs.csv").exists() and not (tmp_path / "~").exists()


def test_each_image_dataset_brings_the_papers_network():
    assert compose_config("task=denoise", "dataset=cifar10").model.name == "cifar10_cnn"
    assert compose_config("task=denoise", "dataset=svhn").model.name == "svhn_cnn"
    assert compose_config("task=denoise").model.name == "mnist_cnn"
    assert compose_config("task=denoise", "dataset=cifar10", "model=logreg").model.name == "logreg"
    # the generated test images keep the MNIST network, so their config hashes do not move
    fake = compose_config("task=denoise", "dataset=fake", "model=mnist_cnn")
    assert results.config_hash(compose_config("task=denoise", "dataset=fake")) == (
        results.config_hash(fake)
    )


# --- 10, 11: config and data errors found while building write no row --------------------------


def test_a_config_error_found_while_building_writes_no_row(tmp_path):
    done = run_cli(
        "task=denoise", "dataset=fake", "model=logreg", "task.noise=1.5",
        f"results_dir={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    user_error(done, "task.noise")
    assert rows(tmp_path / "res") == []


def test_missing_data_is_one_line_and_the_traceback_goes_to_error_txt(tmp_path):
    """The mission's own example, offline: torchvision's download fails deep in urllib."""
    done = run_cli(
        "task=denoise", "dataset=cifar10", f"data.root={tmp_path / 'no_data'}",
        f"results_dir={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    user_error(done, "data error: CIFAR-10", "data.root", str(tmp_path / "run" / "error.txt"))
    assert "Traceback" in (tmp_path / "run" / "error.txt").read_text()
    assert rows(tmp_path / "res") == []


def test_a_failure_after_the_run_started_names_task_dataset_and_solver(tmp_path, monkeypatch):
    """A bug in a user's problem constructor is a failure (exit 1), with a complete row."""
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    cfg = compose_config(
        "task.problem._target_=failure_helpers.BrokenConstructor",
        "solver=rmd",
        f"results_dir={tmp_path}",
    )
    with pytest.raises(ZeroDivisionError):
        runner.run(cfg, tmp_path / "run")
    (row,) = rows(tmp_path)
    assert (row["task"], row["dataset"], row["solver"]) == ("synthetic", "broken", "rmd")
    assert row["status"] == "failed" and row["error"].startswith("ZeroDivisionError")


def test_a_bug_in_a_users_constructor_exits_1_and_a_bad_argument_exits_2(tmp_path):
    target = "task.problem._target_=failure_helpers.BrokenConstructor"
    failed = run_cli(target, f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}",
                     cwd=tmp_path)  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert "[failed] ZeroDivisionError" in failed.stderr and "Traceback" not in failed.stderr
    bad_argument = run_cli(target, "+task.problem.nope=1", f"results_dir={tmp_path}", cwd=tmp_path)
    user_error(bad_argument, "BrokenConstructor cannot be constructed from task.problem", "nope")


# --- 12: messages that name the method, the rule, the file ---------------------------------------


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        # a method missing: found before the run, so a config error and no row
        ("NoLowerObjective", 2, "config error: NoLowerObjective does not define g(u, v, batch)"),
        # wrong values from the user's code once the run has started: a failed run with its row
        ("FloatObjective", 1, "[failed] TypeError: FloatObjective.f must return a scalar tensor"
                              " (one number per run), got float"),
        ("VectorObjective", 1, "[failed] TypeError: VectorObjective.g must return a scalar tensor"
                               " (one number per run), got shape (3,)"),
    ],
)  # fmt: skip
def test_a_users_problem_gets_a_message_naming_the_method(tmp_path, target, code, message):
    done = run_cli(
        f"task.problem._target_=failure_helpers.{target}", "task.iters=2", "device=cpu",
        f"results_dir={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    user_error(done, message, str(tmp_path / "run" / "error.txt"), code=code)
    assert "Traceback" in (tmp_path / "run" / "error.txt").read_text()
    if code == 2:
        assert rows(tmp_path / "res") == []
        return
    (row,) = rows(tmp_path / "res")
    assert (row["task"], row["dataset"], row["solver"], row["status"]) == (
        "synthetic", target, "penalty", "failed"
    )  # fmt: skip
    assert row["error"].startswith(message.removeprefix("[failed] "))


def _omniglot(root: Path, characters: int = 3) -> None:
    for index in range(characters):
        folder = root / "omniglot-py" / "images_background" / "Alphabet" / f"character{index:02d}"
        folder.mkdir(parents=True)
        for drawer in range(2):
            pixels = np.full((20, 20), 255, dtype=np.uint8)
            pixels[: index + drawer + 1, :4] = 0
            Image.fromarray(pixels).convert("1").save(folder / f"{index:04d}_{drawer:02d}.png")
    (root / "omniglot-py" / "images_evaluation").mkdir()


def _omniglot_cfg(tmp_path, characters=3):
    from omegaconf import OmegaConf

    dataset = {"image_size": 10, "train_characters": 2, "split_seed": 0,
               "cache_dir": str(tmp_path / "cache"), "characters": characters}  # fmt: skip
    return OmegaConf.create(dataset), OmegaConf.create({"root": str(tmp_path), "download": False})


def test_a_partial_omniglot_is_refused_with_the_count(tmp_path):
    _omniglot(tmp_path)
    dataset_cfg, data_cfg = _omniglot_cfg(tmp_path)
    del dataset_cfg["characters"]  # the default: the full 1,623
    with pytest.raises(DatasetError, match=r"holds 3 of its 1,623 characters.*characters=3"):
        omniglot.load(dataset_cfg, data_cfg)


def test_a_partial_omniglot_is_one_line_and_its_fix_is_accepted(tmp_path):
    """The fix the message gives, +dataset.characters=3, is a key the loader reads: accepted,
    and the run goes on to the next check (3 characters cannot hold 1,200 for meta-training)."""
    _omniglot(tmp_path)
    common = ["task=fewshot", "dataset=omniglot", f"data.root={tmp_path}",
              f"dataset.cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'res'}"]  # fmt: skip
    partial = run_cli(*common, cwd=tmp_path)
    user_error(partial, "data error: Omniglot under", "holds 3 of its 1,623 characters",
               "+dataset.characters=3")  # fmt: skip
    accepted = run_cli(*common, "+dataset.characters=3", cwd=tmp_path)
    user_error(accepted, "dataset.train_characters=1200 must be between 1 and 2")
    assert rows(tmp_path / "res") == []


def test_a_truncated_omniglot_png_is_named(tmp_path):
    _omniglot(tmp_path)
    png = next((tmp_path / "omniglot-py").rglob("0001_00.png"))
    png.write_bytes(png.read_bytes()[:20])
    with pytest.raises(DatasetError, match=f"{png} is not a readable PNG"):
        omniglot.load(*_omniglot_cfg(tmp_path))


def test_the_decode_cache_follows_the_source_and_a_corrupt_one_is_rebuilt(tmp_path, caplog):
    _omniglot(tmp_path)
    first = omniglot.load(*_omniglot_cfg(tmp_path))
    (first_cache,) = (tmp_path / "cache").glob("*.pt")
    png = next((tmp_path / "omniglot-py").rglob("0002_01.png"))
    original = png.read_bytes()
    blank = np.full((20, 20), 255, dtype=np.uint8)
    Image.fromarray(blank).convert("1").save(png)  # same files, same count, new content
    changed = omniglot.load(*_omniglot_cfg(tmp_path))
    assert not torch.equal(changed.train, first.train) or not torch.equal(changed.test, first.test)
    first_cache.write_bytes(b"torn")  # the first content's cache, cut short
    png.write_bytes(original)
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        restored = omniglot.load(*_omniglot_cfg(tmp_path))
    assert torch.equal(restored.train, first.train) and torch.equal(restored.test, first.test)
    assert "decode cache" in caplog.text and "checkpoint" not in caplog.text


# --- 13: Ctrl-C ---------------------------------------------------------------------------------


def _ctrl_c_reaches_python() -> None:
    """In the child before exec: a shell without job control starts background commands with
    SIGINT ignored, which the child would inherit and Python then never turns into
    KeyboardInterrupt. A user at a terminal has it at its default: so does this run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_that_says_how_to_resume(tmp_path):
    process = bilevel_bench(
        SCRIPTED, "task.iters=200", "checkpoint_every=5", "device=cpu",
        f"results_dir={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path, env_extra={"SWEEP_TEST_DELAY_S": "0.05"},
        preexec_fn=_ctrl_c_reaches_python,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((tmp_path / "res").glob("checkpoints/*/state.pt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert len((out + err).strip().splitlines()) == 1, out + err
    assert "interrupted; no row written" in err and "resume from its checkpoint" in err
    assert not (tmp_path / "res" / "runs.csv").exists()


# --- 15: no empty folders --------------------------------------------------------------------


def test_a_config_error_found_when_the_run_claims_its_device_leaves_no_folder(tmp_path):
    process = bilevel_bench(
        "device=cuda", "task.iters=2", f"results_dir={tmp_path / 'res'}", cwd=tmp_path,
        env_extra={"CUDA_VISIBLE_DEVICES": ""},  # no GPU, on any machine
    )  # fmt: skip
    out, err = process.communicate(timeout=300)
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    user_error(done, "device=cuda was asked for but CUDA is not available")
    assert not (tmp_path / "outputs").exists() and rows(tmp_path / "res") == []


def test_config_errors_and_skipped_runs_leave_no_run_folder(tmp_path):
    assert run_cli("solver.T=0", f"results_dir={tmp_path / 'res'}", cwd=tmp_path).returncode == 2
    assert not (tmp_path / "outputs").exists()
    common = ["task.iters=3", "device=cpu", f"results_dir={tmp_path / 'res'}"]
    assert run_cli(*common, cwd=tmp_path).returncode == 0
    (first,) = list((tmp_path / "outputs").glob("*/*"))
    skipped = run_cli(*common, cwd=tmp_path)
    assert skipped.returncode == 0 and "[skipped]" in skipped.stdout
    assert list((tmp_path / "outputs").glob("*/*")) == [first]


# --- Also: docs cite what a user has ------------------------------------------------------------


def test_docs_cite_the_paper_not_files_users_do_not_have():
    """The development notes on the paper are not shipped: comments and docs cite the paper's
    own sections and tables instead, and the README names the report package, not report.py."""
    private = ["paper" + ".md", "paper-results" + ".md", "modern-solvers" + ".md"]  # spelt apart
    files = [REPO / "README.md", *REPO.glob("results/**/README.md")]
    for folder in ("bilevel_bench", "configs", "scripts", "tests"):
        files += [
            p for p in (REPO / folder).rglob("*") if p.suffix in {".py", ".yaml", ".sh", ".md"}
        ]
    cited = [f"{path.relative_to(REPO)}: {name}" for path in files
             for name in private if name in path.read_text(errors="replace")]  # fmt: skip
    assert cited == []
    assert "report.py" not in (REPO / "README.md").read_text()
