"""`bilevel-bench`: the Hydra application. Thin on purpose: skip if done, run, report the outcome.

Exit codes: 0 ok or skipped (already done), 1 the run failed or diverged, 2 config error. In a
sweep (-m) a job that does not end ok raises RunNotOk instead: Hydra records that job as failed
and carries on with the others, and the sweep exits 1 when they are all done.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bilevel_bench import results, runner
from bilevel_bench.checks import ConfigError

log = logging.getLogger(__name__)


class RunNotOk(RuntimeError):
    """A sweep job that failed, diverged or had a config error (its row, if any, is written)."""


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
    runs_csv = Path(cfg.results_dir) / "runs.csv"
    try:  # before reading seed and runs below
        runner.validate(cfg)
    except ConfigError as err:
        _finish_not_ok(f"config error: {err}", 2, in_sweep)
        return
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
    seeds = [seed for seed in runner.group_seeds(cfg) if seed not in done_seeds]
    if not seeds:
        return
    job_num = 0 if OmegaConf.is_missing(hydra_cfg.job, "num") else int(hydra_cfg.job.num)
    failure: tuple[str, int] | None = None
    try:
        rows = runner.run(cfg, run_dir, job_num=job_num, seeds=seeds)
    except ConfigError as err:
        failure = (f"config error: {err}", 2)
    except Exception as err:  # the runner wrote the failed rows and error.txt before re-raising
        log.error("run failed", exc_info=err)
        failure = (
            f"[failed] {type(err).__name__}: {err}; traceback in {run_dir / 'error.txt'}, "
            f"the failed row(s) appended to {runs_csv}",
            1,
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
        _finish_not_ok(f"[{not_ok[0]['status']}] {not_ok[0]['error']}", 1, in_sweep)


def already_done(cfg: DictConfig) -> list[dict[str, str]]:
    """The ok rows in runs.csv of this config's seeds (those runs are skipped), unless force."""
    if cfg.get("force", False):
        return []
    path = Path(cfg.results_dir) / "runs.csv"
    found = [
        results.find_ok_row(path, results.config_hash(cfg, seed))
        for seed in runner.group_seeds(cfg)
    ]
    return [row for row in found if row is not None]


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
    app()


if __name__ == "__main__":
    main()
