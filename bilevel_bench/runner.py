"""One experiment, top to bottom: validate, build, train (timed), evaluate, record one row per run.

`runs=K` computes the seeds seed, seed+1, ..., seed+K-1 together: every variable carries a
leading run dimension and one solver step advances all K runs. runs=1 is the same code with
K = 1. A run that diverges is frozen (its state no longer changes) and written as `diverged`;
the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bilevel_bench import autodiff, capture, checks, devices, keys, precision, results, tasks
from bilevel_bench.checkpoint import Checkpoint, Progress, same_structure
from bilevel_bench.data.errors import DatasetError
from bilevel_bench.solvers import SOLVERS, solver_class
from bilevel_bench.tasks import build_task

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# Run keys hold a seed's low 31 bits (bilevel_bench.keys): seeds 2**31 apart would draw the
# same random numbers, so every seed of a batch stays below this.
SEED_LIMIT = 2**31
# Mistakes in the config or the data, found while building or starting the runs: nothing has
# been computed, so no row is written (the traceback goes to error.txt, the message is short).
USER_ERRORS = (checks.ConfigError, DatasetError)

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before any work; raises ConfigError naming the key."""
    checks.non_negative_int("seed", cfg.seed)
    checks.positive_int("runs", cfg.get("runs", 1))
    if cfg.seed + cfg.get("runs", 1) > SEED_LIMIT:
        raise checks.ConfigError(
            f"seed={cfg.seed} with runs={cfg.get('runs', 1)}: every seed must be below 2**31 = "
            f"{SEED_LIMIT} (the random streams use a seed's low 31 bits); e.g. seed=0"
        )
    if str(cfg.results_dir).startswith("~"):
        raise checks.ConfigError(
            f"results_dir={cfg.results_dir!r} starts with '~', which is not expanded here (it "
            f"would create a folder named '~'): write the path out, e.g. "
            f"results_dir={Path(str(cfg.results_dir)).expanduser()}"
        )
    checks.one_of(*DTYPES)("dtype", cfg.dtype)
    precision.validate(cfg)
    capture.validate(cfg)
    if not DEVICE_PATTERN.fullmatch(str(cfg.device)):
        raise checks.ConfigError(f"device={cfg.device!r} is not auto, cpu, cuda or cuda:N")
    if "iters" in cfg.task:
        checks.positive_int("task.iters", cfg.task.iters)
    checks.positive_int("task.eval_every", cfg.task.eval_every)
    checks.non_negative_int("checkpoint_every", cfg.get("checkpoint_every", 0))
    if cfg.get("max_train_minutes") is not None:  # null: no limit
        checks.positive("max_train_minutes", cfg.max_train_minutes)
    solver_class(cfg.solver.name).validate(cfg.solver)
    validate_tuned(cfg)


def validate_tuned(cfg: DictConfig) -> None:
    """configs/tuned/<task>.yaml may only name known solvers and their declared keys (a typo
    there would otherwise silently leave the default in place)."""
    tuned = cfg.get("tuned") or {}
    where = f"configs/tuned/{cfg.task.name}.yaml"
    for solver, section in tuned.items():
        if solver not in SOLVERS:
            raise checks.ConfigError(
                f"{where}: {solver!r} is not a solver; known: {checks.names(SOLVERS)}"
            )
        unknown = sorted(set(section) - set(SOLVERS[solver].params))
        if unknown:
            raise checks.ConfigError(
                f"{where}: {solver}.{unknown[0]} is not a hyper-parameter of {solver}; its "
                f"hyper-parameters are: {checks.names(SOLVERS[solver].params)}"
            )


def group_seeds(cfg: DictConfig) -> list[int]:
    return list(range(int(cfg.seed), int(cfg.seed) + int(cfg.get("runs", 1))))


def run(
    cfg: DictConfig, run_dir: Path, job_num: int = 0, seeds: list[int] | None = None
) -> list[dict[str, Any]]:
    """Run the experiment for `seeds` (default: seed .. seed+runs-1) and return one row per run
    (also written to disk).

    Config errors raise before any work. Exceptions during the run are recorded as rows with
    status `failed` and re-raised; non-finite values stop a run with status `diverged`.
    With checkpoint_every > 0 the computation saves its state periodically and resumes from it.
    `job_num` (a sweep's job number) picks which free GPU to try first (see devices.py).
    """
    validate(cfg)
    results.check_results_dir(Path(cfg.results_dir))
    seeds = group_seeds(cfg) if seeds is None else list(seeds)
    with devices.claim(str(cfg.device), job_num) as device:
        return _run_on(cfg, seeds, device, Path(run_dir))


def run_dirs_for(run_dir: Path, seeds: list[int]) -> list[Path]:
    """A single run writes into the run dir itself; a batch into one sub-folder per seed."""
    return [run_dir] if len(seeds) == 1 else [run_dir / f"seed{seed}" for seed in seeds]


@dataclass
class Outcome:
    """What a batched computation produced: the final state and every run's metrics."""

    task: Any
    state: dict[str, Any]
    progress: Progress
    final: dict[int, dict[str, float]]  # final_metrics of the runs that did not diverge
    captured: bool | None = None  # steps replayed from a CUDA graph (None: no step was taken)

    def metrics(self, run: int) -> dict[str, float]:
        """The run's row metrics: the last evaluation, then the task's final metrics."""
        metrics = _final_point(self.progress.curves[run])
        metrics.update({k: float(x) for k, x in self.final.get(run, {}).items()})
        return metrics


def new_progress(seeds: list[int]) -> Progress:
    return Progress(step=0, train_time=0.0, curves=[[] for _ in seeds], diverged={})


def execute(
    cfg,
    seeds: list[int],
    device: torch.device,
    dirs: list[Path],
    saver=None,
    progress=None,
    task=None,
) -> Outcome:
    """Build (unless `task` is given), initialise (or resume), train and finish the runs of
    `seeds` together. `progress` (updated in place) tells the caller how far a run that raised
    got."""
    task = build_task(cfg, device, seeds) if task is None else task
    state, solver = _initial_state(cfg, task, seeds, device)
    progress = new_progress(seeds) if progress is None else progress
    if saver is not None:
        loaded = saver.load(device)
        if loaded is not None and not same_structure(loaded[0], state):
            log.warning("ignoring checkpoint %s: its state does not fit this run", saver.path)
        elif loaded is not None:
            state = loaded[0]
            vars(progress).update(vars(loaded[1]))
    stepper = capture.for_run(cfg, solver, device)  # solver.step, or its CUDA-graph replay
    with precision.applied(precision.name_of(cfg), device):
        state = _train(cfg, task, stepper, state, progress, saver, device)
        ok = [run for run in range(len(seeds)) if run not in progress.diverged]
        final = task.final_metrics(state["u"], state["v"], ok, dirs)
    return Outcome(task, state, progress, final, stepper.captured)


class RecordError(OSError):
    """Runs that finished, but some of their files or rows could not be written (the message
    says which were and which were not)."""


def _run_on(cfg, seeds: list[int], device: torch.device, run_dir: Path) -> list[dict]:
    torch.set_default_dtype(DTYPES[cfg.dtype])
    capture.wanted(cfg, device)  # config errors that need the device, before any row
    precision.check_device(precision.name_of(cfg), device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    dirs = run_dirs_for(run_dir, seeds)
    rows = _new_rows(cfg, seeds, dirs, device)
    saver = Checkpoint.for_run(cfg, results.batch_key(cfg, seeds))
    progress = new_progress(seeds)
    error, trace = None, None
    try:
        task = build_task(cfg, device, seeds)
        for row in rows:  # known from here on, also for a run that fails later
            row["dataset"] = task.dataset_name
            row.update(task.labels)
        for directory in dirs:  # final_metrics may write files there
            directory.mkdir(parents=True, exist_ok=True)
        outcome = execute(cfg, seeds, device, dirs, saver, progress, task)
        for run, row in enumerate(rows):
            row["capture"] = outcome.captured
            if run in outcome.progress.diverged:
                row["status"], row["error"] = "diverged", outcome.progress.diverged[run]
            else:
                row.update(outcome.metrics(run))
                row["status"] = "ok"
    except USER_ERRORS:  # nothing was computed: no row, the traceback kept for whoever asks
        _try_write(run_dir / "error.txt", traceback.format_exc())
        raise
    except Exception as err:  # recorded, then re-raised so the process exits non-zero
        error, trace = err, traceback.format_exc()
        for row in rows:
            row["status"], row["error"] = "failed", f"{type(err).__name__}: {err}"
    peak = _peak_memory_mb(device)
    for run, row in enumerate(rows):
        row["runtime_s"] = progress.train_time
        row["upper_steps"] = _steps_done(progress, run)
        row["peak_mem_mb"] = peak
    not_written = _record(cfg, rows, dirs, progress, run_dir, trace)
    if not_written:
        raise RecordError(not_written) from error
    if saver is not None:  # the rows are written: nothing left to resume
        saver.discard()
    if error is not None:
        raise error
    return rows


def _new_rows(cfg, seeds: list[int], dirs: list[Path], device: torch.device) -> list[dict]:
    """One row per run, every identifying column filled before anything can fail."""
    environment = results.environment(device)
    return [
        results.new_row(
            task=cfg.task.name,
            dataset=tasks.dataset_name(cfg),
            solver=cfg.solver.name,
            seed=seed,
            runs=len(seeds),
            precision=precision.name_of(cfg),
            config_hash=results.config_hash(cfg, seed, runs=len(seeds)),
            group_hash=results.group_hash(cfg),
            run_dir=str(directory.resolve()),
            **environment,
        )
        for seed, directory in zip(seeds, dirs, strict=True)
    ]


def _try_write(path: Path, text: str) -> None:
    """Best effort: the caller's message says whether the file is there."""
    with contextlib.suppress(OSError):
        _write_text(path, text)


def _record(cfg, rows, dirs, progress: Progress, run_dir: Path, trace: str | None) -> str:
    """Write what the runs produced. Every write is tried, whatever failed before it, so that as
    much as possible is kept. Returns "" when all were written, else a message saying which were
    not (with the first error) and which were."""
    written: dict[str, list[Path]] = {}
    failed: dict[str, list[tuple[Path, Exception]]] = {}
    for kind, path, write in _planned_writes(cfg, rows, dirs, progress, run_dir, trace):
        try:
            write(path)
            written.setdefault(kind, []).append(path)
        except (OSError, ValueError) as err:  # ValueError: a runs.csv or configs.jsonl that
            # does not parse (torn by a crash, edited by hand)
            failed.setdefault(kind, []).append((path, err))
    return _not_written_message(rows, written, failed) if failed else ""


def _planned_writes(cfg, rows, dirs, progress, run_dir, trace):
    """(kind, path, write(path)): error.txt (a failure; in the run dir too, where the CLI's
    message points), each run's curve.csv, result.json and run config (runs=K), its runs.csv
    row, then the configs by hash."""
    runs_csv = Path(cfg.results_dir) / results.RUNS_CSV
    writes = []
    if trace is not None:
        for directory in dict.fromkeys([run_dir, *dirs]):
            writes.append(("error.txt", directory / "error.txt", partial(_write_text, text=trace)))
    for run, (row, directory) in enumerate(zip(rows, dirs, strict=True)):
        if progress.curves[run]:
            curve = pd.DataFrame(progress.curves[run])
            writes.append(
                ("curve.csv", directory / "curve.csv", partial(curve.to_csv, index=False))
            )
        writes.append(
            ("result.json", directory / "result.json", partial(results.write_json, payload=row))
        )
        if len(rows) > 1:  # what Hydra writes for a single run, per run: the report reads it
            config = _run_config(cfg, row["seed"], len(rows))
            path = directory / ".hydra" / "config.yaml"
            writes.append(("run config", path, partial(_write_yaml, config=config)))
        writes.append(("runs.csv row", runs_csv, partial(results.append_row, row=row)))
    configs = {row["config_hash"]: results.run_config(cfg, row["seed"], len(rows)) for row in rows}
    configs_file = Path(cfg.results_dir) / results.CONFIGS
    writes.append(("configs.jsonl", configs_file, partial(results.append_configs, configs=configs)))
    return writes


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _write_yaml(path: Path, config) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, path)


def _not_written_message(rows, written: dict, failed: dict) -> str:
    statuses = ", ".join(sorted({str(row["status"]) for row in rows}))
    lost = "; ".join(
        f"{_count(kind, len(items))} NOT written to {items[0][0]} ({type(items[0][1]).__name__}: "
        f"{items[0][1]})"
        for kind, items in failed.items()
    )
    kept = ", ".join(f"{_count(kind, len(paths))} ({paths[0]})" for kind, paths in written.items())
    return f"the run(s) ended {statuses}, but {lost}. Written: {kept or 'nothing'}"


def _count(kind: str, n: int) -> str:
    return kind if n == 1 else f"{n} x {kind}"


def _final_point(curve: list[dict[str, float]]) -> dict[str, float]:
    """The task's metrics at the last evaluation (not the step, time or solver diagnostics)."""
    if not curve:
        return {}
    return {
        k: value
        for k, value in curve[-1].items()
        if k not in ("step", "time_s") and not k.startswith("solver_")
    }


def _steps_done(progress: Progress, run: int) -> int:
    if run in progress.diverged and progress.curves[run]:
        return int(progress.curves[run][-1]["step"])
    return progress.step


def _run_config(cfg, seed: int, runs: int) -> DictConfig:
    own = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    own.seed, own.runs = seed, runs
    return own


def _initial_state(cfg, task, seeds, device):
    """Variables of every run (one generator per seed), the solver and its initial state."""
    problem = task.problem
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    u, v = (_on_device(x, device) for x in problem.init_variables(generators))
    cls = solver_class(cfg.solver.name)
    cls.check_problem(u, v)
    solver = cls(problem, cfg.solver)
    stream = {
        "key": keys.run_keys(seeds, device),
        "step": torch.zeros(len(seeds), dtype=torch.int64, device=device),
    }
    return solver.init(u, v, stream), solver


def _on_device(variables, device):
    """The variables as the solver gets them, after checking they are where and what the config
    says (a mismatch would fail deep inside torch, or silently compute in another precision)."""
    dtype = torch.get_default_dtype()  # set from cfg.dtype by _run_on
    out = {}
    for name, tensor in variables.items():
        if tensor.device != device:
            raise checks.ConfigError(
                f"the problem created variable {name!r} on {tensor.device}, but device={device}; "
                "give your problem's constructor a `device` argument and create tensors there"
            )
        if tensor.is_floating_point() and tensor.dtype != dtype:
            raise checks.ConfigError(
                f"the problem created variable {name!r} as {tensor.dtype}, but dtype="
                f"{str(dtype).removeprefix('torch.')}; give your problem's constructor a `dtype` "
                "argument, or create tensors without one (they follow dtype=)"
            )
        out[name] = tensor.detach().clone()
    return out


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device) -> float:
    """CUDA: peak allocated by torch. CPU: peak resident set size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def freeze(alive: torch.Tensor, new: Any, old: Any) -> Any:
    """The new state for the runs still alive, the old one for the others ([K] bool `alive`)."""
    if isinstance(new, dict):
        return {k: freeze(alive, new[k], old[k]) for k in new}
    shape = alive.shape + (1,) * (new.dim() - 1)
    return torch.where(alive.reshape(shape), new, old)


def _train(cfg, task, solver, state, progress: Progress, saver, device) -> dict:
    """The timed loop, from step 0 or from where a checkpoint left off; returns the final state.

    Evaluation and checkpoint time are excluded from `time_s` and runtime_s. With
    max_train_minutes set, the loop also ends (evaluated, status ok) once that much training time
    is spent: a fixed compute budget; the row's upper_steps says how far it got.
    """
    budget = cfg.get("max_train_minutes")
    budget_s = math.inf if budget is None else 60.0 * float(budget)
    diagnostics: dict[str, torch.Tensor] = {}

    def record(step):
        """Evaluate (the loop's only host synchronisation), log, freeze diverged runs."""
        metrics = task.evaluate(state["u"], state["v"])
        solver_info = {f"solver_{k}": t.tolist() for k, t in diagnostics.items()}
        finite = autodiff.finite_per_run(state["u"], state["v"]).tolist()
        for run, point in enumerate(metrics):
            if run in progress.diverged:
                continue
            info = {k: float(values[run]) for k, values in solver_info.items()}
            progress.curves[run].append(
                {"step": step, "time_s": progress.train_time, **point, **info}
            )
            bad = [k for k, value in point.items() if not math.isfinite(value)]
            if bad or not finite[run]:
                progress.diverged[run] = (
                    f"non-finite values ({', '.join(bad) or 'variables'}) at upper step {step}"
                )
        shown = metrics[0] if metrics else {}
        bar.set_postfix({k: f"{value:.3g}" for k, value in shown.items()}, refresh=False)

    show = bool(cfg.progress) and sys.stderr.isatty()
    bar = tqdm(
        total=task.total_steps, initial=progress.step, disable=not show, desc=cfg.solver.name
    )
    with bar:
        if progress.step == 0:  # a resumed run has done this and logged step 0 already
            started = time.perf_counter()
            u, v = task.prepare(state["u"], state["v"])
            # the solver's state again, from the prepared variables: its own copies of them
            # (f2sa's penalised v, vpbgd's omega) must start where v starts, not at the
            # initialisation that pre-training replaced
            state = solver.init(u, v, state["stream"])
            _synchronize(device)
            progress.train_time += time.perf_counter() - started
            record(0)
        alive, frozen = None, set()
        for step in range(progress.step + 1, task.total_steps + 1):
            if len(progress.diverged) == task.runs:
                break
            if set(progress.diverged) != frozen:  # changes only at an evaluation: no sync here
                frozen = set(progress.diverged)
                alive = torch.tensor([run not in frozen for run in range(task.runs)], device=device)
            started = time.perf_counter()
            new_state, diagnostics = solver.step(state)
            state = new_state if alive is None else freeze(alive, new_state, state)
            _synchronize(device)
            progress.train_time += time.perf_counter() - started
            progress.step = step
            bar.update()
            out_of_time = progress.train_time >= budget_s
            if step % task.eval_every == 0 or step == task.total_steps or out_of_time:
                record(step)
            if out_of_time:
                log.info(
                    "max_train_minutes=%s spent after %d of %d upper steps",
                    budget,
                    step,
                    task.total_steps,
                )
                break
            if saver is not None and saver.due(step, task.total_steps):
                saver.save(state, progress)
    return state
