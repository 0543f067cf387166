"""Time of one lower (inner) step of penalty, approxgrad and rmd relative to one plain SGD step,
on the authors' MNIST and CIFAR-10 networks and the same minibatch (random pixels of the right
shape: the cost of a step does not depend on the values). Writes results/denoise/bench_step.csv.

    python scripts/bench_step.py [--repeats 3] [--T 5] [--device cpu] [--out results/denoise/bench_step.csv]

An upper step of a solver with T lower steps is timed as a whole and divided by T, so the
per-step figure includes its share of the once-per-upper-step work (the u update).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from bilevel_bench import autodiff, runner
from bilevel_bench.solvers import solver_class
from bilevel_bench.tasks import build_task

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
NETWORKS = {"mnist_cnn": (28, 1), "cifar10_cnn": (32, 3)}
SOLVERS = ("penalty", "approxgrad", "rmd")


def _setup(model, solver, T, batch, device):
    size, channels = NETWORKS[model]
    overrides = [
        "task=denoise", "dataset=fake", f"model={model}", f"solver={solver}", f"solver.T={T}",
        f"dataset.size={size}", f"dataset.channels={channels}", f"task.batch_size={batch}",
        f"task.val_batch_size={batch}", f"dataset.n_train={4 * batch}", f"dataset.val_size={batch}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    generator = runner.seed_everything(0)
    task = build_task(cfg, device, generator)
    u, v = (runner._leaves(x, device) for x in task.problem.init_variables(generator))
    return cfg, task, u, v, generator


def _timed(fn, repeats, device):
    fn()  # warm-up: allocator, autograd caches
    runner._synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    runner._synchronize(device)
    return (time.perf_counter() - started) / repeats


def plain_sgd_step(task, u, v, generator):
    optimizer = torch.optim.SGD(list(v.values()), lr=1e-3)
    problem = task.problem

    def step():
        upper, lower = problem.sample_batches(generator)
        loss = problem.bind(autodiff.detached(u), upper, lower).g(v)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--T", type=int, default=5, help="lower steps per timed upper step")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/denoise/bench_step.csv")
    args = parser.parse_args()
    device = runner.resolve_device(args.device)
    rows = []
    for model in NETWORKS:
        cfg, task, u, v, generator = _setup(model, "penalty", args.T, args.batch, device)
        baseline = _timed(plain_sgd_step(task, u, v, generator), args.repeats, device)
        rows.append({"model": model, "solver": "sgd", "T": 1, "step_s": baseline, "ratio": 1.0})
        for solver in SOLVERS:
            cfg, task, u, v, generator = _setup(model, solver, args.T, args.batch, device)
            instance = solver_class(solver)(task.problem, u, v, cfg.solver, generator)
            upper = _timed(instance.step, args.repeats, device)
            per_step = upper / args.T
            rows.append(
                {"model": model, "solver": solver, "T": args.T, "step_s": per_step,
                 "ratio": per_step / baseline}
            )  # fmt: skip
            print(
                f"{model:12s} {solver:10s} {per_step * 1e3:8.1f} ms/step  x{per_step / baseline:.2f}"
            )
    frame = pd.DataFrame(rows)
    frame["batch"], frame["device"] = args.batch, str(device)
    frame["torch"], frame["threads"] = torch.__version__, torch.get_num_threads()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(frame.to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
