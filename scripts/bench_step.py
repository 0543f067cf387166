"""Time of one lower (inner) step of penalty, approxgrad and rmd relative to one plain SGD step,
on the authors' MNIST and CIFAR-10 networks and the same minibatch (random pixels of the right
shape: the cost of a step does not depend on the values). Writes results/denoise/bench_step.csv.

    python scripts/bench_step.py [--repeats 3] [--batch 200] [--device auto] [--models ...] [--out ...]

A solver's upper step costs fixed + T * inner (+ T2 * solve for ApproxGrad's linear-solve
iterations). Timing whole upper steps at T (and T2) = 1 and 3 gives `inner_ratio` (the marginal
cost of one more lower step), `solve_ratio` and `fixed_ratio` (once per upper step: the u update),
all in plain SGD steps, and `amortized_ratio_T20` = (fixed + 20 inner + 20 solve) / 20, the cost
per lower step at the authors' T = T2 = 20.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from bilevel_bench import devices, runner
from bilevel_bench.results import device_name
from bilevel_bench.tasks import build_task

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
NETWORKS = {"mnist_cnn": (28, 1), "cifar10_cnn": (32, 3)}
SOLVERS = ("penalty", "approxgrad", "rmd")


SHORT, LONG = 1, 3


def _setup(model, solver, T, batch, device, T2=None):
    size, channels = NETWORKS[model]
    overrides = [
        "task=denoise", "dataset=fake", f"model={model}", f"solver={solver}", f"solver.T={T}",
        f"dataset.size={size}", f"dataset.channels={channels}", f"task.batch_size={batch}",
        f"task.val_batch_size={batch}", f"dataset.n_train={4 * batch}", f"dataset.val_size={batch}",
    ] + ([f"solver.T2={T2}"] if T2 is not None else [])  # fmt: skip
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    task = build_task(cfg, device, [0])
    state, solver = runner._initial_state(cfg, task, [0], device)
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


def solver_step(solver, state):
    """One upper step of the solver (its state carried from call to call)."""
    box = [state]

    def step():
        box[0], _ = solver.step(box[0])

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/denoise/bench_step.csv")
    parser.add_argument("--models", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args()
    with devices.claim(args.device) as device:
        frame = measure(args.models, args.batch, args.repeats, device)
    frame["batch"], frame["device"] = args.batch, device_name(device)
    frame["torch"], frame["threads"] = torch.__version__, torch.get_num_threads()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(frame.to_string(index=False))
    print(f"wrote {args.out}")


def measure(models, batch, repeats, device) -> pd.DataFrame:
    rows = []
    for model in models:
        for solver in SOLVERS:
            # the SGD reference is re-timed next to each solver: on a shared or throttling CPU
            # one reference for the whole run drifts by tens of percent
            task, state, _ = _setup(model, "penalty", 1, batch, device)
            sgd = _timed(plain_sgd_step(task, state), repeats, device)
            solve_steps = solver == "approxgrad"
            settings = [(SHORT, SHORT), (LONG, SHORT)] + ([(SHORT, LONG)] if solve_steps else [])
            upper = {}
            for T, T2 in settings:
                task, state, instance = _setup(
                    model, solver, T, batch, device, T2 if solve_steps else None
                )
                upper[T, T2] = _timed(solver_step(instance, state), repeats, device)
            base = upper[SHORT, SHORT]
            inner = (upper[LONG, SHORT] - base) / (LONG - SHORT)
            solve = (upper[SHORT, LONG] - base) / (LONG - SHORT) if solve_steps else 0.0
            fixed = base - SHORT * (inner + solve)
            row = {
                "model": model, "solver": solver, "sgd_step_s": sgd, "upper_step_T1_s": base,
                "inner_ratio": inner / sgd, "solve_ratio": solve / sgd, "fixed_ratio": fixed / sgd,
                "amortized_ratio_T20": (fixed + 20 * (inner + solve)) / 20 / sgd,
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
