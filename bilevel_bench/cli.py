"""`bilevel-bench`: the Hydra application. Thin on purpose: check, skip if done, run, report.

Exit codes (README, "Failures"):
  0    ok, or skipped (already done)
  1    a run failed or diverged, or its results could not all be written (the message says which)
  2    config or data error, Hydra's own included: nothing ran and no row was written
  130  interrupted (Ctrl-C): no row; the same command resumes it (from its checkpoint, if any)
In a sweep (-m) a job that does not end ok raises RunNotOk instead: Hydra records that job as failed
and carries on with the others, and the sweep exits 1 when they are all done.

User errors (config, data, environment) print one line naming the key or file and the fix; the
traceback, when there is one worth keeping, goes to the run's error.txt.
"""

from __future__ import annotations

import gc
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bilevel_bench import results, runner
from bilevel_bench.checkpoint import Checkpoint
from bilevel_bench.checks import ConfigError
from bilevel_bench.data import OPTIONAL_KEYS
from bilevel_bench.hydra_hooks import ConfigComposed, HeldStream

EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 1, 2, 130


class RunNotOk(CompactHydraException):
    """A sweep job that failed, diverged or had a config error (its row, if any, is written).
    Hydra prints a compact exception's message alone, without a traceback."""


def config_dir() -> str:
    """Configs ship inside the wheel (bilevel_bench/configs); in a checkout they are top-level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"bilevel-bench configs not found next to {here}; reinstall the package"
    )


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    runs_csv = Path(cfg.results_dir) / results.RUNS_CSV
    try:  # before reading seed, runs and runs.csv below
        check_added_keys(cfg, hydra_cfg.overrides.task)
        runner.validate(cfg)
        results.check_results_dir(Path(cfg.results_dir))
    except ConfigError as err:
        remove_hydra_leftovers(run_dir, hydra_cfg)
        _finish_not_ok(f"config error: {err}", EXIT_CONFIG, in_sweep)
        return
    seeds = seeds_to_run(cfg, runs_csv)
    if not seeds:
        remove_hydra_leftovers(run_dir, hydra_cfg)
        return
    job_num = 0 if OmegaConf.is_missing(hydra_cfg.job, "num") else int(hydra_cfg.job.num)
    failure: tuple[str, int] | None = None
    try:
        rows = runner.run(cfg, run_dir, job_num=job_num, seeds=seeds)
    except KeyboardInterrupt:
        print(f"bilevel-bench: {interrupted(cfg, seeds)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)  # in a sweep too: Ctrl-C stops it all
    except runner.USER_ERRORS as err:  # nothing ran: no row (the runner kept the traceback)
        kind = "config error" if isinstance(err, ConfigError) else "data error"
        failure = (f"{kind}: {err}{_traceback_note(run_dir)}", EXIT_CONFIG)
        if not (run_dir / "error.txt").is_file():  # found before the build (e.g. no CUDA)
            remove_hydra_leftovers(run_dir, hydra_cfg)
    except runner.RecordError as err:
        failure = (str(err), EXIT_FAILED)
    except Exception as err:  # the runner wrote the failed rows and error.txt before re-raising
        failure = (
            f"[failed] {type(err).__name__}: {err}; traceback in {run_dir / 'error.txt'}, "
            f"the failed row(s) appended to {runs_csv}",
            EXIT_FAILED,
        )
    if failure is not None:  # outside the except block, so nothing keeps the error's frames
        _release_memory()  # a sweep in this process goes on: free what the failed run held
        _finish_not_ok(*failure, in_sweep)
        return
    for row in rows:
        print(
            f"[{row['status']}] {_describe(row)} {_headline(row)} runtime={row['runtime_s']:.2f}s"
        )
    where = "result.json" if len(rows) == 1 else "seed*/result.json"
    count = "1 row" if len(rows) == 1 else f"{len(rows)} rows"
    print(f"results: {run_dir / where} (curve.csv beside it); {count} appended to {runs_csv}")
    not_ok = [row for row in rows if row["status"] != "ok"]
    if not_ok:
        _finish_not_ok(f"[{not_ok[0]['status']}] {not_ok[0]['error']}", EXIT_FAILED, in_sweep)


# Keys added with `+` that are checked by name elsewhere: Hydra's own settings, and the solvers'
# declared hyper-parameters, directly or through configs/tuned (runner.validate).
CHECKED_ELSEWHERE = ("hydra.", "solver.", "tuned.")


def check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse a key added with `+` that nothing reads: it would change nothing but the config
    hash (`+task.iterz=5` for task.iters). Accepted: the keys checked elsewhere (above), the
    dataset keys a loader reads when present (data.OPTIONAL_KEYS), and the keys of a section
    with a `_target_`, which are a class's constructor arguments (a user's problem) and fail its
    construction when wrong. `++` (set or add) is Hydra's explicit way to set a key whether or
    not it exists, and is left alone."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if not override.is_add() or key.startswith(CHECKED_ELSEWHERE):
            continue
        if override.package is not None or "/" in key or (Path(config_dir()) / key).is_dir():
            continue  # a config group: Hydra itself refuses an unknown one, listing the options
        if _constructor_argument(cfg, key) or _optional_dataset_key(key):
            continue
        parent, _, leaf = key.rpartition(".")
        section = OmegaConf.select(cfg, parent) if parent else cfg
        is_section = isinstance(section, DictConfig)
        known = [k for k in section if k not in (leaf, "hydra")] if is_section else []
        where = f"{parent} has" if parent else "the top-level keys are"
        hint = "a key that exists is set without '+'"
        if is_section and "_target_" in section:  # a class not named yet
            hint = f"keys of {parent} are read once {parent}._target_ names a class"
        raise ConfigError(
            f"{override.input_line} adds {key}, which bilevel-bench does not read: check the "
            f"spelling ({where} {', '.join(map(str, known)) or 'no keys'}); {hint}"
        )


def _optional_dataset_key(key: str) -> bool:
    section, _, leaf = key.rpartition(".")
    return section == "dataset" and leaf in OPTIONAL_KEYS


def _constructor_argument(cfg: DictConfig, key: str) -> bool:
    """Whether `key` lies inside a section that names a class to construct (`_target_`)."""
    parts = key.split(".")
    for depth in range(1, len(parts)):
        section = OmegaConf.select(cfg, ".".join(parts[:depth]))
        if isinstance(section, DictConfig) and section.get("_target_") is not None:
            return True
    return False


def seeds_to_run(cfg: DictConfig, runs_csv: Path) -> list[int]:
    """The group's seeds that have no ok row yet (each skipped one is announced)."""
    done = already_done(cfg)
    if done and len(done) < int(cfg.runs) and cfg.get("max_train_minutes") is not None:
        # under a time budget a run's result depends on its batch size: all K run again
        print("[note] max_train_minutes is set and only some seeds are done: the batch runs whole")
        done = []
    for row in done:
        print(
            f"[skipped] {_describe(row)}: already has an ok row in {runs_csv} "
            f"(config_hash={row['config_hash']}, run_dir={row['run_dir']}); "
            "force=true re-runs it"
        )
    done_seeds = {int(row["seed"]) for row in done}
    return [seed for seed in runner.group_seeds(cfg) if seed not in done_seeds]


def already_done(cfg: DictConfig) -> list[dict[str, str]]:
    """The ok rows in runs.csv of this config's seeds (those runs are skipped), unless force."""
    if cfg.get("force", False):
        return []
    path = Path(cfg.results_dir) / results.RUNS_CSV
    found = [
        results.find_ok_row(path, results.config_hash(cfg, seed))
        for seed in runner.group_seeds(cfg)
    ]
    return [row for row in found if row is not None]


def remove_hydra_leftovers(run_dir: Path, hydra_cfg: DictConfig) -> None:
    """A job that runs nothing (config error, all seeds done) leaves no folder behind: remove
    what Hydra wrote there before the job started (.hydra/ and the job's log), then the folder
    and its parents below the working directory (outputs/DATE/) while that empties them.
    Anything else stays."""
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    log_file = OmegaConf.select(hydra_cfg, "job_logging.handlers.file.filename")
    if log_file:
        Path(log_file).unlink(missing_ok=True)
    here = Path.cwd().resolve()
    for folder in [run_dir.resolve(), *run_dir.resolve().parents]:
        if folder == here or not folder.is_relative_to(here):
            break
        try:
            folder.rmdir()
        except OSError:  # not empty: the rest is someone else's
            break


def interrupted(cfg: DictConfig, seeds: list[int]) -> str:
    """What Ctrl-C left behind and how to go on: true whichever step it came at."""
    saver = Checkpoint.for_run(cfg, results.batch_key(cfg, seeds))
    if saver is not None and saver.path.is_file():
        return (
            "interrupted; no row written. Re-run the same command to resume from its "
            f"checkpoint ({saver.path})"
        )
    hint = "" if saver is not None else " (checkpoint_every=N saves progress to resume from)"
    return f"interrupted; no row written. Re-run the same command to start it again{hint}"


def _traceback_note(run_dir: Path) -> str:
    path = run_dir / "error.txt"
    return f" (traceback in {path})" if path.is_file() else ""


def _describe(row) -> str:
    return f"{row['task']}/{row['dataset']} solver={row['solver']} seed={row['seed']}"


def _headline(row) -> str:
    keys = ("test_acc", "upper_error", "upper_loss")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if row.get(k) is not None)


def _finish_not_ok(message: str, exit_code: int, in_sweep: bool) -> None:
    """Single run: message and exit code. Sweep: raise, so Hydra marks only this job failed
    (the sweep goes on and ends with the first such job's message and exit code 1)."""
    print(f"bilevel-bench: {message}", file=sys.stderr)
    if in_sweep:
        raise RunNotOk(message)
    sys.exit(exit_code)


def _release_memory() -> None:
    gc.collect()  # the traceback's frames form cycles that hold the run's tensors
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    ConfigComposed.composed = False  # main() may run more than once in one process (tests)
    # stderr is held until the config is composed (ConfigComposed releases it), so that Hydra's
    # own config error, printed before that, can be told in a few lines
    held = ConfigComposed.held = HeldStream(sys.stderr)
    sys.stderr = held
    try:
        app()
    except SystemExit as done:
        if done.code == 1 and not ConfigComposed.composed:  # Hydra's own config error
            message = held.take()
            if "Traceback (most recent call last)" in message:  # not a config error: a bug
                held.stream.write(message)
                raise
            print(compact_hydra_error(message), file=held.stream)
            raise SystemExit(EXIT_CONFIG) from None
        raise
    except KeyboardInterrupt:  # before or after a run (during one, app() says more)
        held.release()
        print("bilevel-bench: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        held.release()  # what was printed before a --cfg or --help exit, say
        if sys.stderr is held:
            sys.stderr = held.stream
        ConfigComposed.held = None


def compact_hydra_error(message: str) -> str:
    """Hydra's config error in a few lines: the lists it prints one item per indented line (a
    config group's options, its search path) each on one line, blank lines left out."""
    lines: list[str] = []
    for line in message.splitlines():
        if line.startswith("\t") and lines:
            joiner = " " if lines[-1].endswith(":") else "; "
            lines[-1] += joiner + line.strip()
        elif line.strip():
            lines.append(line.rstrip())
    if not lines:
        return "bilevel-bench: config error"
    lines[0] = f"bilevel-bench: config error: {lines[0]}"
    return "\n".join(lines)


if __name__ == "__main__":
    main()
