"""Time per upper step and peak memory of each solver as T and the number of upper variables U grow.

The problem is fixed: bilevel_bench.benchmarks.WeightedMLPProblem (example weights for a small
MLP; U changes while the cost of one gradient stays the same), one run.

Every configuration runs in a fresh process (forked from the main process before it has computed
anything), because ru_maxrss is a high-water mark: peak memory is the peak RSS during the steps
minus the RSS just before them. On CUDA it is torch.cuda.max_memory_allocated above the
allocation before the steps. Time is the median over timed steps after one warm-up step.

    python scripts/bench_complexity.py            # full run, writes results/complexity.{csv,png}
    python scripts/bench_complexity.py --quick    # smoke mode (seconds)
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from bilevel_bench import keys
from bilevel_bench.benchmarks import WeightedMLPProblem, solver_config
from bilevel_bench.results import device_name
from bilevel_bench.solvers import SOLVERS

# Imported once before forking (no computation before it, so forking is safe). torch._dynamo is
# pulled in lazily by the first optimiser step and the jvp decompositions by the first jvp: both
# take seconds, which would otherwise be paid again in every child.
PRELOAD = [
    "torch",
    "torch._dynamo",
    "torch._decomp.decompositions_for_jvp",
    "torch.func",
    "omegaconf",
    "bilevel_bench.solvers",
]
REPO = Path(__file__).resolve().parents[1]
SOLVER_NAMES = ["penalty", "approxgrad", "rmd", "fmd"]
SWEEPS = ["T", "U", "sgd_ratio"]
RATIO_PAIRS = 50  # at most this many (penalty step, SGD step) pairs per ratio
FULL = {"T": [1, 5, 10, 25, 50, 100], "U": [1, 4, 16, 64, 256], "fixed_T": 10, "fixed_U": 16}
QUICK = {"T": [1, 20], "U": [2, 8], "fixed_T": 2, "fixed_U": 4}
SIZES = {"examples": 512, "inputs": 32, "hidden": 64, "classes": 10}
# The SGD ratio also on a wider MLP, where arithmetic rather than per-operation overhead dominates.
WIDE_SIZES = {"examples": 2048, "inputs": 128, "hidden": 512, "classes": 10}
# quick mode keeps the activations large (so RMD's stored iterates show) and the steps few
QUICK_SIZES = {"examples": 1024, "inputs": 8, "hidden": 64, "classes": 4}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class MemoryProbe:
    """Peak memory of the code between start() and peak_mb(), for one device."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.before = _rss_mb()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.before
        return max(0.0, _max_rss_mb() - self.before)


def _timed(step, device, min_time: float, max_steps: int, warm_up: bool = True) -> list[float]:
    """Seconds of each timed call of `step`, after one untimed warm-up call (a single timed call
    when the warm-up alone took longer than min_time: slow steps vary little)."""
    needed = 1
    if warm_up:
        started = time.perf_counter()
        step()
        needed = 1 if time.perf_counter() - started > min_time else 2
    times: list[float] = []
    while len(times) < needed or (sum(times) < min_time and len(times) < max_steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def _prime_libraries(device: torch.device) -> None:
    """Run autograd (double backward), an optimiser and torch.func once on tiny tensors, so their
    one-time initialisation is not counted as the memory of the first solver step."""
    x = torch.ones(3, device=device, requires_grad=True)
    (gx,) = torch.autograd.grad((x**3).sum(), x, create_graph=True)
    gx.sum().backward()
    torch.optim.Adam([x], lr=0.1).step()
    square = lambda y: (y**2).sum()  # noqa: E731
    directions = torch.eye(3, device=device)
    torch.func.vmap(lambda d: torch.func.jvp(torch.func.grad(square), (x.detach(),), (d,)))(
        directions
    )


def measure(job: dict) -> dict:
    """One configuration, in its own process. job: solver, T, U, sweep, device, sizes, ..."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    _prime_libraries(device)
    problem = WeightedMLPProblem(job["U"], device=device, **job["sizes"])
    u, v = problem.init_variables([torch.Generator().manual_seed(0)])
    row = {
        "sweep": job["sweep"],
        "solver": job["solver"],
        "T": job["T"],
        "U": job["U"],
        "V": sum(t.numel() for t in v.values()),
        "examples": job["sizes"]["examples"],
        "hidden": job["sizes"]["hidden"],
    }
    # One ordinary gradient of g first: its persistent first-use allocations (allocator arenas,
    # kernel caches) are the same for every solver and are not what this benchmark compares.
    leaves = {k: t.clone().requires_grad_() for k, t in v.items()}
    problem.g(u, leaves, None).sum().backward()
    probe = MemoryProbe(device)
    if job["sweep"] == "sgd_ratio":
        return {**row, **_sgd_ratio(problem, u, v, job, device)}
    solver, state = _solver(problem, job["solver"], job["T"], u, v, device)
    probe.start()
    times = _timed(stepper(solver, state), device, job["min_time"], job["max_steps"])
    return {
        **row,
        "step_ms": 1000 * statistics.median(times),
        "step_ms_min": 1000 * min(times),
        "timed_steps": len(times),
        "peak_mem_mb": probe.peak_mb(),
        "baseline_mb": probe.before,
    }


def _solver(problem, name, T, u, v, device):
    solver = SOLVERS[name](problem, solver_config(name, T))
    stream = {"key": keys.run_keys([0], device), "step": torch.zeros(1, dtype=torch.int64)}
    return solver, solver.init(u, v, {k: t.to(device) for k, t in stream.items()})


def stepper(solver, state):
    """A function of no arguments taking one upper step (the state carried between calls)."""
    box = [state]

    def step():
        box[0], _ = solver.step(box[0])

    return step


def _sgd_ratio(problem, u, v, job, device) -> dict:
    """One penalty upper step (T=1) against one plain SGD step on g, same model and batch.

    The two alternate step by step in one process, so both see the same machine load and the
    same number of samples; each is the fastest of its calls, because on a shared machine other
    processes only ever add time (and interrupt a long step more often than a short one).
    """
    penalty = stepper(*_solver(problem, "penalty", 1, u, v, device))
    leaves = {k: t.clone().requires_grad_() for k, t in v.items()}
    sgd = torch.optim.SGD(list(leaves.values()), lr=0.01)

    def sgd_step():
        sgd.zero_grad(set_to_none=True)
        problem.g(u, leaves, None).sum().backward()
        sgd.step()

    penalty_s, sgd_s = [], []
    while len(penalty_s) < 5 or (
        sum(penalty_s) < 2 * job["min_time"] and len(penalty_s) < RATIO_PAIRS
    ):
        penalty_s += _timed(penalty, device, 0.0, 1, warm_up=not penalty_s)
        sgd_s += _timed(sgd_step, device, 0.0, 1, warm_up=not sgd_s)
    penalty_ms, sgd_ms = 1000 * min(penalty_s), 1000 * min(sgd_s)
    return {
        "step_ms": penalty_ms,
        "sgd_step_ms": sgd_ms,
        "ratio_to_sgd": penalty_ms / sgd_ms,
        "timed_steps": len(penalty_s),
    }


def jobs_for(args) -> list[dict]:
    grid = QUICK if args.quick else FULL
    common = {
        "device": args.device,
        "threads": args.threads,
        "sizes": QUICK_SIZES if args.quick else SIZES,
        "min_time": 0.0 if args.quick else args.min_time,
        "max_steps": 2 if args.quick else 20,
    }
    jobs = []
    if "sgd_ratio" in args.sweeps:
        for sizes in [common["sizes"]] if args.quick else [SIZES, WIDE_SIZES]:
            jobs.append(
                {
                    "sweep": "sgd_ratio",
                    "solver": "penalty",
                    "T": 1,
                    "U": grid["fixed_U"],
                    "sizes": sizes,
                }
            )
    for solver in args.solvers:
        if "T" in args.sweeps:
            jobs += [
                {"sweep": "T", "solver": solver, "T": T, "U": grid["fixed_U"]} for T in grid["T"]
            ]
        if "U" in args.sweeps:
            jobs += [
                {"sweep": "U", "solver": solver, "T": grid["fixed_T"], "U": U} for U in grid["U"]
            ]
    return [{**common, **job} for job in jobs]


def run_isolated(jobs: list[dict]) -> list[dict]:
    """Each job in a fresh child process: its peak memory is its own.

    On the CPU the child is forked from this process, which has imported the libraries but
    computed nothing (so forking is safe, each child's high-water RSS starts at its RSS, and no
    child pays the imports again). CUDA cannot be used in a forked child once the parent has
    touched it (and importing the preloaded modules can), so CUDA jobs start by spawn; their memory
    is torch.cuda.max_memory_allocated, which is per process anyway.
    """
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notice from torch.func
    for module in PRELOAD:
        importlib.import_module(module)
    on_cuda = any(str(job["device"]).startswith("cuda") for job in jobs)
    context = multiprocessing.get_context("spawn" if on_cuda else "fork")
    rows = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for row in pool.imap(measure, jobs):
            print(_describe(row), flush=True)
            rows.append(row)
    return rows


def _describe(row: dict) -> str:
    text = f"{row['sweep']:>9} {row['solver']:<10} T={row['T']:<3} U={row['U']:<4} "
    text += f"{row['step_ms']:9.2f} ms/step"
    if "ratio_to_sgd" in row:
        return text + f"  sgd {row['sgd_step_ms']:.2f} ms  ratio {row['ratio_to_sgd']:.2f}x"
    return text + f"  peak +{row['peak_mem_mb']:.1f} MB"


def plot(frame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for col, sweep in enumerate(["T", "U"]):
        part = frame[frame["sweep"] == sweep]
        for row, (metric, label) in enumerate(
            [
                ("step_ms", "time per upper step (ms)"),
                ("peak_mem_mb", "peak memory above start (MB)"),
            ]
        ):
            ax = axes[row, col]
            for solver, lines in part.groupby("solver"):
                lines = lines.sort_values(sweep)
                # log axis: a peak below the RSS resolution reads as 0, drawn at the floor
                ax.plot(lines[sweep], lines[metric].clip(lower=0.1), marker="o", label=solver)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{sweep} ({'lower steps' if sweep == 'T' else 'upper variables'})")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "results")
    parser.add_argument("--name", default="complexity", help="output file stem (.csv, .png)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--solvers", nargs="+", default=SOLVER_NAMES, choices=SOLVER_NAMES)
    parser.add_argument("--sweeps", nargs="+", default=SWEEPS, choices=SWEEPS)
    parser.add_argument("--min-time", type=float, default=0.6, help="timed seconds per config")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} asked for, but CUDA is not available")

    import pandas as pd

    started = time.perf_counter()
    rows = run_isolated(jobs_for(args))
    frame = pd.DataFrame(rows)
    device = torch.device(args.device)
    frame["device"] = device_name(device)
    frame["threads"] = args.threads
    frame["torch"] = torch.__version__
    frame["python"] = platform.python_version()
    frame["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.out_dir / f"{args.name}.csv"
    png_path = args.out_dir / f"{args.name}.png"
    frame.to_csv(csv_path, index=False)
    title = f"{device_name(device)}, {args.threads} thread(s)"
    if "sgd_ratio" in args.sweeps:
        ratios = frame[frame["sweep"] == "sgd_ratio"]
        listed = ", ".join(
            f"{r.ratio_to_sgd:.1f}x (hidden {r.hidden}, {r.examples} examples)"
            for r in ratios.itertuples()
        )
        title += f"\none penalty upper step (T=1) / one plain SGD step: {listed}"
    plot(frame[frame["sweep"] != "sgd_ratio"], png_path, title)
    print(f"wrote {csv_path} and {png_path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
