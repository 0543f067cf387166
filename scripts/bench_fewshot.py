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
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from bilevel_bench import autodiff, keys
from bilevel_bench.solvers import solver_class
from bilevel_bench.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


def first_stream():
    """The random stream of the one run benchmarked, before its first step."""
    return {"key": keys.run_keys([SEED]), "step": torch.zeros(1, dtype=torch.int64)}


def next_stream(stream):
    return {**stream, "step": stream["step"] + 1}


def build(args):
    """The config, the task and the initial (u, v) of one run (leading run dimension 1)."""
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
    task = build_task(cfg, torch.device("cpu"), [SEED])
    u, v = task.problem.init_variables([torch.Generator().manual_seed(SEED)])
    return cfg, task, u, v


class LoopPenalty:
    """The same penalty meta-iteration with one head (and one torch.optim.Adam) per task, looped.

    Heads are slices [1, 1, ...] of the batched ones (run 0, task b), so the problem's loss and
    encoder serve both variants unchanged."""

    def __init__(self, problem, u, v, cfg):
        self.problem, self.cfg = problem, cfg
        self.u = autodiff.leaves(u)
        self.heads = [
            {k: t[:, b : b + 1].detach().clone().requires_grad_() for k, t in v.items()}
            for b in range(v["weight"].shape[1])
        ]
        self.opt_v = [torch.optim.Adam(list(h.values()), lr=float(cfg.lr_v)) for h in self.heads]
        self.opt_u = torch.optim.Adam(list(self.u.values()), lr=float(cfg.lr_u))
        self.nu = [
            {k: torch.full_like(t, float(cfg.nu0)) for k, t in h.items()} for h in self.heads
        ]
        self.gamma, self.lam = float(cfg.gamma0), float(cfg.lam0)

    def _task_terms(self, b, support, query, upper, lower):
        """(task b's share of h_upper, of g): each task's loss over the meta-batch size, so the
        tasks' terms sum to the batched objective."""
        n_tasks, head, loss = len(self.heads), self.heads[b], self.problem.loss
        f = loss(query[:, b : b + 1], head, upper.labels[:, b : b + 1]) / n_tasks
        g = loss(support[:, b : b + 1], head, lower.labels[:, b : b + 1]) / n_tasks
        gv = autodiff.grad(g, head, create_graph=True)
        return f + autodiff.dot(self.nu[b], gv) + 0.5 * self.gamma * autodiff.norm_sq(gv), g

    def step(self, stream, lower_only=False):
        upper, lower = self.problem.sample_batches(stream)
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
        self._reset_heads(next_stream(stream))

    def _reset_heads(self, stream):
        """The problem's fresh heads for the next meta-iteration (Adam's state kept), as the
        solver gets them from problem.after_step."""
        stacked = {k: torch.cat([h[k] for h in self.heads], dim=1) for k in self.heads[0]}
        _, fresh = self.problem.after_step(self.u, autodiff.detached(stacked), stream)
        with torch.no_grad():
            for b, head in enumerate(self.heads):
                for k, t in head.items():
                    t.copy_(fresh[k][:, b : b + 1])


class BatchedPenalty:
    """The shipped penalty solver, driven like LoopPenalty: `step(stream, lower_only)`."""

    def __init__(self, solver, state):
        self.solver, self.state = solver, state

    def step(self, stream, lower_only=False):
        state = {**self.state, "stream": stream}
        if lower_only:
            self._lower_phase(state)
        else:
            self.state, _ = self.solver.step(state)

    def _lower_phase(self, state):
        """The solver's lower phase alone: bind with u detached, T penalised steps on v."""
        solver = self.solver
        bound = solver.bind_fixed_u(state, *solver.problem.sample_batches(state["stream"]))
        for _ in range(solver.T):
            v = autodiff.leaves(state["v"])
            value, _, g, _ = solver._penalised(state, bound, v)
            state = solver.step_v(state, autodiff.grad(value + state["lam"].to(g.dtype) * g, v))

    @property
    def u(self):
        return self.state["u"]


def make_pair(args):
    """The shipped penalty solver and the loop version, from the same start."""
    cfg, task, u, v = build(args)
    solver = solver_class("penalty")(task.problem, cfg.solver)
    batched = BatchedPenalty(solver, solver.init(u, v, first_stream()))
    return batched, LoopPenalty(task.problem, u, v, cfg.solver)


def same_step_max_diff(args) -> float:
    """One meta-iteration of each from the same start on the same episodes, in float64.

    float64 because Adam's first step is about lr * sign(gradient): coordinates whose gradient
    is tiny would otherwise differ by float32 noise.
    """
    torch.set_default_dtype(torch.float64)
    try:
        batched, loop = make_pair(args)
        for variant in (batched, loop):
            variant.step(first_stream())
        return max(float((batched.u[k] - loop.u[k]).detach().abs().max()) for k in loop.u)
    finally:
        torch.set_default_dtype(torch.float32)


def median_seconds(variant, lower_only: bool, repeats: int) -> float:
    """Median time of `repeats` steps (after a warm-up), each on the next meta-iteration."""
    stream, times = first_stream(), []
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        variant.step(stream, lower_only)
        if repeat > 0:  # the first is the warm-up
            times.append(time.perf_counter() - started)
        stream = next_stream(stream)
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
    variants = dict(zip(("batched", "loop"), make_pair(args), strict=True))
    timings = {
        (name, phase): median_seconds(variant, phase == "lower_phase", args.repeats)
        for phase in ("meta_iteration", "lower_phase")
        for name, variant in variants.items()
    }
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
