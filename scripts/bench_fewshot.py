"""Penalty meta-iteration on few-shot learning: batched heads (the task as shipped) against a
per-task loop implementation of the same step (written here only, for comparison).

Both use one encoder pass per bind (same BatchNorm statistics), the same episodes, the same
objective (mean over tasks) and Adam on the heads (elementwise, so one Adam over the batched
tensor equals one Adam per task). The loop version walks the tasks in Python for every lower
step and sums per-task penalised objectives for the upper step. The script first checks that
both produce the same encoder update from the same start, then times median steps.

    python scripts/bench_fewshot.py                    # meta-batch 30, 5-way 1-shot, 15 queries
    python scripts/bench_fewshot.py --channels 16 --queries 5

Writes results/fewshot/bench_fewshot.csv (one row per variant and phase, plus the ratios).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from bilevel_bench import autodiff, runner
from bilevel_bench.solvers import solver_class
from bilevel_bench.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]


def build(args):
    overrides = [
        "task=fewshot",
        "dataset=fake_fewshot",
        "solver=penalty",
        "device=cpu",
        f"model.channels={args.channels}",
        f"task.ways={args.ways}",
        f"task.shots={args.shots}",
        f"task.queries={args.queries}",
        f"task.meta_batch={args.meta_batch}",
        f"solver.T={args.T}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    generator = runner.seed_everything(0)
    task = build_task(cfg, torch.device("cpu"), generator)
    u, v = (runner._leaves(x, torch.device("cpu")) for x in task.problem.init_variables(generator))
    return cfg, task, u, v


class LoopPenalty:
    """The same penalty meta-iteration with one head (and one Adam) per task, looped."""

    def __init__(self, problem, u, v, cfg):
        self.problem, self.u, self.cfg = problem, u, cfg
        n_tasks = v["weight"].shape[0]
        self.heads = [
            {k: t[b : b + 1].detach().clone().requires_grad_() for k, t in v.items()}
            for b in range(n_tasks)
        ]
        self.opt_v = [torch.optim.Adam(list(h.values()), lr=float(cfg.lr_v)) for h in self.heads]
        self.opt_u = torch.optim.Adam(list(u.values()), lr=float(cfg.lr_u))
        self.nu = [
            {k: torch.full_like(t, float(cfg.nu0)) for k, t in h.items()} for h in self.heads
        ]
        self.gamma, self.lam = float(cfg.gamma0), float(cfg.lam0)

    def _task_terms(self, b, support, query, upper, lower):
        n_tasks, head = len(self.heads), self.heads[b]
        loss = self.problem.loss
        f = loss(query[b : b + 1], head, upper.labels[b : b + 1]) / n_tasks
        g = loss(support[b : b + 1], head, lower.labels[b : b + 1]) / n_tasks
        gv = autodiff.grad(g, head, create_graph=True)
        return f + autodiff.dot(self.nu[b], gv) + 0.5 * self.gamma * autodiff.norm_sq(gv), g

    def step(self, generator, lower_only=False):
        upper, lower = self.problem.sample_batches(generator)
        fixed_u = autodiff.detached(self.u)
        support = self.problem.features(fixed_u, lower.images)
        query = self.problem.features(fixed_u, upper.images)
        for _ in range(int(self.cfg.T)):
            for b, head in enumerate(self.heads):
                value, g = self._task_terms(b, support, query, upper, lower)
                direction = autodiff.grad(value + self.lam * g, head)
                for k, t in head.items():
                    t.grad = direction[k]
                self.opt_v[b].step()
        if lower_only:
            return
        support = self.problem.features(self.u, lower.images)
        query = self.problem.features(self.u, upper.images)
        total = sum(
            self._task_terms(b, support, query, upper, lower)[0] for b in range(len(self.heads))
        )
        for k, t in autodiff.grad(total, self.u).items():
            self.u[k].grad = t
        self.opt_u.step()


def make_pair(args):
    """The shipped penalty solver and the loop version, from the same start."""
    cfg, task, u, v = build(args)
    generator = torch.Generator().manual_seed(1)
    penalty = solver_class("penalty")(task.problem, u, v, cfg.solver, generator)
    loop_u = {k: t.detach().clone().requires_grad_() for k, t in u.items()}
    loop = LoopPenalty(task.problem, loop_u, copy.deepcopy(autodiff.detached(v)), cfg.solver)
    return penalty, loop, task


def same_step_max_diff(args) -> float:
    """One meta-iteration of each from the same start on the same episodes, in float64.

    float64 because Adam's first step is about lr * sign(gradient): coordinates whose exact
    gradient is zero (conv biases before BatchNorm) would otherwise differ by float32 noise.
    """
    torch.set_default_dtype(torch.float64)
    try:
        penalty, loop, _ = make_pair(args)
        penalty.step()
        loop.step(torch.Generator().manual_seed(1))
        return max(float((penalty.u[k] - loop.u[k]).detach().abs().max()) for k in loop.u)
    finally:
        torch.set_default_dtype(torch.float32)


def median_seconds(step, repeats):
    step()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta-batch", type=int, default=30)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--T", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "fewshot" / "bench_fewshot.csv"))
    args = parser.parse_args(argv)

    max_diff = same_step_max_diff(args)
    print(f"max |u_batched - u_loop| after one float64 meta-iteration: {max_diff:.2e}")
    penalty, loop, task = make_pair(args)
    generator = torch.Generator().manual_seed(2)
    penalty.generator = generator
    timings = {
        ("batched", "meta_iteration"): median_seconds(penalty.step, args.repeats),
        ("loop", "meta_iteration"): median_seconds(lambda: loop.step(generator), args.repeats),
        ("loop", "lower_phase"): median_seconds(lambda: loop.step(generator, True), args.repeats),
    }

    def batched_lower():  # the solver's lower phase alone: bind detached, T penalised steps
        upper, lower = task.problem.sample_batches(generator)
        bound = penalty.bind_fixed_u(upper, lower)
        for _ in range(penalty.T):
            value, _, g, _ = penalty._penalised(bound, penalty.v)
            penalty.apply_v(autodiff.grad(value + penalty.lam * g, penalty.v))

    timings[("batched", "lower_phase")] = median_seconds(batched_lower, args.repeats)
    rows = []
    for (variant, phase), seconds in timings.items():
        rows.append(
            {
                "variant": variant,
                "phase": phase,
                "median_s": seconds,
                "loop_over_batched": timings[("loop", phase)] / timings[("batched", phase)],
                "max_u_diff_one_step": max_diff,
                **{k: v for k, v in vars(args).items() if k != "out"},
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": f"{platform.machine()} cpu, {torch.get_num_threads()} threads (shared)",
            }
        )
    frame = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(frame[["variant", "phase", "median_s", "loop_over_batched"]].to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
