"""One experiment, top to bottom: validate, seed, build, train (timed), evaluate, record a row."""

from __future__ import annotations

import logging
import math
import random
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bilevel_bench import autodiff, checks, devices, results
from bilevel_bench.checkpoint import Checkpoint, RunParts
from bilevel_bench.solvers import solver_class
from bilevel_bench.tasks import build_task

DTYPES = {"float32": torch.float32, "float64": torch.float64}

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """Non-finite variables or metrics: the run stops and its row says so."""


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before any work; raises ConfigError naming the key."""
    checks.non_negative_int("seed", cfg.seed)
    checks.one_of(*DTYPES)("dtype", cfg.dtype)
    if not (cfg.device == "auto" or str(cfg.device).startswith(("cpu", "cuda"))):
        raise checks.ConfigError(f"device={cfg.device!r} is not auto, cpu, cuda or cuda:N")
    if "iters" in cfg.task:
        checks.positive_int("task.iters", cfg.task.iters)
    checks.positive_int("task.eval_every", cfg.task.eval_every)
    checks.non_negative_int("checkpoint_every", cfg.get("checkpoint_every", 0))
    if cfg.get("max_train_minutes") is not None:  # null: no limit
        checks.positive("max_train_minutes", cfg.max_train_minutes)
    solver_class(cfg.solver.name).validate(cfg.solver)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _leaves(variables, device):
    out = {}
    for name, tensor in variables.items():
        if tensor.device != device:
            raise checks.ConfigError(
                f"the problem created variable {name!r} on {tensor.device}, but device={device}; "
                "give your problem's constructor a `device` argument and create tensors there"
            )
        out[name] = tensor.detach().clone().requires_grad_()
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


def _as_floats(info: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in info.items()}


def _check_finite(metrics: dict[str, float], u, v) -> None:
    bad = [k for k, value in metrics.items() if not math.isfinite(value)]
    if bad or not autodiff.all_finite(u, v):
        raise Diverged(f"non-finite values ({', '.join(bad) or 'variables'})")


def run(cfg: DictConfig, run_dir: Path, job_num: int = 0) -> dict[str, Any]:
    """Run one experiment and return its result row (also written to disk).

    Config errors raise before any work. Exceptions during the run are recorded as a row with
    status `failed` and re-raised; non-finite values stop the run with status `diverged`.
    With checkpoint_every > 0 the run saves its state periodically and resumes from it.
    `job_num` (a sweep's job number) picks which free GPU to try first (see devices.py).
    """
    validate(cfg)
    with devices.claim(str(cfg.device), job_num) as device:
        return _run_on(cfg, device, run_dir)


def _run_on(cfg: DictConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    torch.set_default_dtype(DTYPES[cfg.dtype])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    row = results.new_row(
        task=cfg.task.name,
        dataset=None,
        solver=cfg.solver.name,
        seed=int(cfg.seed),
        config_hash=results.config_hash(cfg),
        group_hash=results.group_hash(cfg),
        run_dir=str(run_dir.resolve()),
        **results.environment(device),
    )
    curve: list[dict[str, float]] = []
    state = {"step": 0, "train_time": 0.0}
    error: BaseException | None = None
    saver = Checkpoint.for_run(cfg, row["config_hash"])
    try:
        generator = seed_everything(int(cfg.seed))
        task = build_task(cfg, device, generator)
        row["dataset"] = task.dataset_name
        u, v = (_leaves(x, device) for x in task.problem.init_variables(generator))
        solver = solver_class(cfg.solver.name)(task.problem, u, v, cfg.solver, generator)
        parts = RunParts(u, v, solver, task, generator, curve, state, device)
        if saver is not None:
            saver.restore(parts)
        final = _train(cfg, parts, saver)
        row.update(final)
        row.update(_as_floats(task.final_metrics(u, v)))
        row["status"] = "ok"
    except Diverged as err:
        row["status"], row["error"] = "diverged", str(err)
    except Exception as err:  # recorded, then re-raised so the process exits non-zero
        row["status"] = "failed"
        row["error"] = f"{type(err).__name__}: {err}"
        error = err
        (run_dir / "error.txt").write_text(traceback.format_exc())
    row["runtime_s"] = state["train_time"]
    row["upper_steps"] = state["step"]
    row["peak_mem_mb"] = _peak_memory_mb(device)
    if curve:
        pd.DataFrame(curve).to_csv(run_dir / "curve.csv", index=False)
    results.write_json(run_dir / "result.json", row)
    results.append_row(Path(cfg.results_dir) / "runs.csv", row)
    if saver is not None:  # the row is written: nothing left to resume
        saver.discard()
    if error is not None:
        raise error
    return row


def _train(cfg, parts: RunParts, saver: Checkpoint | None) -> dict[str, float]:
    """The timed loop, from step 0 or from where a checkpoint left off.

    Evaluation and checkpoint time are excluded from `time_s` and runtime_s. With
    max_train_minutes set, the loop also ends (evaluated, status ok) once that much training time
    is spent: a fixed compute budget, e.g. to fit a sweep into a machine reservation; the row's
    upper_steps says how far it got.
    """
    task, solver, u, v, device = parts.task, parts.solver, parts.u, parts.v, parts.device
    curve, state = parts.curve, parts.progress

    def record(step):
        metrics = task.evaluate(u, v)
        solver_info = {f"solver_{k}": value for k, value in diagnostics.items()}
        curve.append({"step": step, "time_s": state["train_time"], **metrics, **solver_info})
        _check_finite(metrics, u, v)
        progress.set_postfix({k: f"{val:.3g}" for k, val in metrics.items()}, refresh=False)
        return metrics

    budget = cfg.get("max_train_minutes")
    budget_s = math.inf if budget is None else 60.0 * float(budget)
    diagnostics: dict[str, float] = {}
    show = bool(cfg.progress) and sys.stderr.isatty()
    progress = tqdm(
        total=task.total_steps, initial=state["step"], disable=not show, desc=cfg.solver.name
    )
    with progress:
        if state["step"] == 0:  # a resumed run has done this and logged step 0 already
            started = time.perf_counter()
            task.prepare(u, v)
            _synchronize(device)
            state["train_time"] += time.perf_counter() - started
            record(0)
        metrics: dict[str, float] = {}
        for step in range(state["step"] + 1, task.total_steps + 1):
            started = time.perf_counter()
            info = solver.step()
            task.after_step(step, u, v)
            _synchronize(device)
            state["train_time"] += time.perf_counter() - started
            state["step"] = step
            progress.update()
            out_of_time = state["train_time"] >= budget_s
            if step % task.eval_every == 0 or step == task.total_steps or out_of_time:
                diagnostics = _as_floats(info)
                metrics = record(step)
            if out_of_time:
                log.info(
                    "max_train_minutes=%s spent after %d of %d upper steps",
                    budget,
                    step,
                    task.total_steps,
                )
                break
            if saver is not None and saver.due(step, task.total_steps):
                saver.save(parts)
    return metrics
