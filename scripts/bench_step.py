"""Time of one lower (inner) step of penalty, approxgrad and rmd relative to one plain SGD step,
on the authors' MNIST and CIFAR-10 networks and the same minibatch (random pixels of the right
shape: the cost of a step does not depend on the values). Writes results/denoise/bench_step.csv.

    python scripts/bench_step.py [--repeats 3] [--batch 200] [--device auto] [--models ...] [--out ...]
                                 [--solvers ...] [--runs K ...] [--capture off on] [--precision fp32 tf32 bf16]

A solver's upper step costs fixed + T * inner (+ T2 * solve for ApproxGrad's linear-solve
iterations). Timing whole upper steps at T (and T2) = 1 and 3 gives `inner_ratio` (the marginal
cost of one more lower step), `solve_ratio` and `fixed_ratio` (once per upper step: the u update),
all in plain SGD steps, and `amortized_ratio_T20` = (fixed + 20 inner + 20 solve) / 20, the cost
per lower step at the authors' T = T2 = 20. `inner_s` is that marginal lower step in seconds (all
K runs of --runs together; `inner_per_run_s` = inner_s / K): quote it only from a GPU run.
--capture on replays the solvers' upper steps from CUDA graphs (bilevel_bench.capture; the SGD
reference stays eager), `capture` says whether it did; --precision sets the run's precision
(bilevel_bench.precision) for everything timed. Several values of --runs, --capture and
--precision: one row per combination, in one process.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from bilevel_bench import capture, devices, precision, runner
from bilevel_bench.results import device_name
from bilevel_bench.tasks import build_task

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
NETWORKS = {"mnist_cnn": (28, 1), "cifar10_cnn": (32, 3)}
SOLVERS = ("penalty", "approxgrad", "rmd")


SHORT, LONG = 1, 3


def _setup(model, solver, T, batch, device, T2=None, runs=1):
    size, channels = NETWORKS[model]
    overrides = [
        "task=denoise", "dataset=fake", f"model={model}", f"solver={solver}", f"solver.T={T}",
        f"dataset.size={size}", f"dataset.channels={channels}", f"task.batch_size={batch}",
        f"task.val_batch_size={batch}", f"dataset.n_train={4 * batch}", f"dataset.val_size={batch}",
    ] + ([f"solver.T2={T2}"] if T2 is not None else [])  # fmt: skip
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    seeds = list(range(runs))
    task = build_task(cfg, device, seeds)
    state, solver = runner._initial_state(cfg, task, seeds, device)
    return task, state, solver


def _timed(fn, repeats, device):
    fn()  # warm-up: allocator, autograd caches
    runner._synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    runner._synchronize(device)
    return (time.perf_counter() - started) / repeats


def plain_sgd_step(task, state):
    """One torch.optim.SGD step on g for the same network and batch size (the reference)."""
    v = {k: t.clone().requires_grad_() for k, t in state["v"].items()}
    optimizer = torch.optim.SGD(list(v.values()), lr=1e-3)
    problem, stream = task.problem, state["stream"]

    def step():
        upper, lower = problem.sample_batches(stream)
        loss = problem.bind(state["u"], upper, lower).g(v)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()

    return step


def solver_step(solver, state, captured=False):
    """One upper step of the solver (its state carried from call to call); `captured`: replayed
    from CUDA graphs (captured at the first call, the timing's warm-up). `step.stepper` tells
    whether the capture worked."""
    stepper = capture.Stepper(solver, capture=captured)
    box = [state]

    def step():
        box[0], _ = stepper.step(box[0])

    step.stepper = stepper
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/denoise/bench_step.csv")
    parser.add_argument("--models", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    parser.add_argument("--runs", type=int, nargs="+", default=[1], help="K runs stepped together")
    parser.add_argument("--capture", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=precision.PRECISIONS)
    args = parser.parse_args()
    frames = []
    with devices.claim(args.device) as device:
        if "on" in args.capture and device.type != "cuda":
            parser.error("--capture on needs a CUDA device")
        for runs, mode, name in itertools.product(args.runs, args.capture, args.precision):
            print(f"--- runs={runs} capture={mode} precision={name}", flush=True)
            with precision.applied(name, device):
                frame = measure(
                    args.models, args.batch, args.repeats, device, args.solvers, runs,
                    mode == "on",
                )  # fmt: skip
            frame["precision"], frame["runs"] = name, runs
            frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["batch"], frame["device"] = args.batch, device_name(device)
    frame["torch"], frame["threads"] = torch.__version__, torch.get_num_threads()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(frame.to_string(index=False))
    print(f"wrote {args.out}")


def measure(
    models, batch, repeats, device, solvers=SOLVERS, runs=1, captured=False
) -> pd.DataFrame:
    rows = []
    for model in models:
        for solver in solvers:
            # the SGD reference is re-timed next to each solver: on a shared or throttling CPU
            # one reference for the whole run drifts by tens of percent
            task, state, _ = _setup(model, "penalty", 1, batch, device, runs=runs)
            sgd = _timed(plain_sgd_step(task, state), repeats, device)
            solve_steps = solver == "approxgrad"
            settings = [(SHORT, SHORT), (LONG, SHORT)] + ([(SHORT, LONG)] if solve_steps else [])
            upper, used = {}, []
            for T, T2 in settings:
                task, state, instance = _setup(
                    model, solver, T, batch, device, T2 if solve_steps else None, runs
                )
                step = solver_step(instance, state, captured)
                upper[T, T2] = _timed(step, repeats, device)
                used.append(bool(step.stepper.captured))
            base = upper[SHORT, SHORT]
            inner = (upper[LONG, SHORT] - base) / (LONG - SHORT)
            solve = (upper[SHORT, LONG] - base) / (LONG - SHORT) if solve_steps else 0.0
            fixed = base - SHORT * (inner + solve)
            row = {
                "model": model, "solver": solver, "sgd_step_s": sgd, "upper_step_T1_s": base,
                "inner_ratio": inner / sgd, "solve_ratio": solve / sgd, "fixed_ratio": fixed / sgd,
                "amortized_ratio_T20": (fixed + 20 * (inner + solve)) / 20 / sgd,
                "inner_s": inner, "inner_per_run_s": inner / runs, "capture": all(used),
            }  # fmt: skip
            rows.append(row)
            print(
                f"{model:12s} {solver:10s} inner x{row['inner_ratio']:.2f}  "
                f"fixed x{row['fixed_ratio']:.2f}  amortized(T=20) x{row['amortized_ratio_T20']:.2f}",
                flush=True,
            )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
