"""Engine benchmark: per-run throughput of runs=K, and the engine's overhead at K = 1 against the
same computation written as plain torch.autograd / torch.optim calls.

    python scripts/bench_engine.py [--device cpu|cuda] [--runs 1 4 16] [--repeats 5]
                                   [--modes throughput overhead step_cost]
                                   [--out results/perf/engine_cpu.csv] [--quick]

One CSV, one row per measurement (`kind`):
- throughput: upper steps per second per run for each K on three workloads, each compared with
  K = 1 in the same process: smd20 with penalty; the logistic-regression denoising step at the
  MNIST shapes of experiment=denoise_mnist_small (784 inputs, 5000 noisy + 5000 validation
  images, batch 200, the tuned penalty); the authors' MNIST CNN step (batch 200). The images
  are generated at the real shapes: a step costs the same whatever the pixels.
- overhead: every solver at K = 1, T = 20, on bilevel_bench.benchmarks.WeightedMLPProblem (a
  small MLP, 16 example-weight groups) against the same method written as plain autograd and
  torch.optim calls (`plain_*` below) on the problem's own f and g: `ratio` = engine / plain,
  the engine's overhead. `ratio_to_unbatched`: against the same plain code on an MLP written
  without a run dimension (the price of the run axis at K = 1). The three are stepped in turn,
  so that they see the same machine load; each time is the median over the timed rounds.
- step_cost: every registered solver's upper step at K = 1 on the same MLP problem, at T = 20
  (T2 = T for the linear solves) and at the solver's declared T (10 for most; soba and vpbgd 1),
  against one plain torch.optim.SGD step on g (`ratio`, the issue's unit) and against one
  gradient of g through the engine's autodiff (`gradients`: the count a first-order method's
  T + 3 is about; bome and vpbgd T + 3, f2sa 3T + 3). The three are stepped in turn; medians.
Times are wall-clock; compare the ratios (absolute times only from a GPU run, device named).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from bilevel_bench import autodiff, devices, keys, runner
from bilevel_bench.benchmarks import WeightedMLPProblem, solver_config
from bilevel_bench.results import device_name
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks import build_task

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
WORKLOADS = {
    "smd20_penalty": ["dataset=smd20", "solver=penalty"],
    "logreg_denoise_penalty": [
        "task=denoise",
        "dataset=fake",
        "model=logreg",
        "solver=penalty",
        "dataset.size=28",
        "dataset.n_train=10000",
        "dataset.val_size=5000",
        "task.batch_size=200",
    ],  # fmt: skip
    "cnn_denoise_penalty": [
        "task=denoise",
        "dataset=fake",
        "model=mnist_cnn",
        "solver=penalty",
        "dataset.size=28",
        "dataset.n_train=1200",
        "dataset.val_size=200",
        "task.batch_size=200",
        "solver.T=2",
    ],  # fmt: skip
}
MLP = {"examples": 512, "inputs": 32, "hidden": 64, "classes": 10}
GROUPS, OVERHEAD_T = 16, 20
MODES = ("throughput", "overhead", "step_cost")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stepper(solver, state):
    box = [state]

    def step():
        box[0], _ = solver.step(box[0])

    return step


def one_run_stream(device):
    return {"key": keys.run_keys([0], device), "step": torch.zeros(1, dtype=torch.int64, device=device)}  # fmt: skip


def interleaved_medians(steps: dict, pairs: int, device) -> dict[str, float]:
    """Median seconds of each step after one warm-up; the steps take turns, so that all of them
    see the same machine load."""
    times = {label: [] for label in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(pairs):
        for label, step in steps.items():
            synchronize(device)
            started = time.perf_counter()
            step()
            synchronize(device)
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


# --- throughput of runs=K ------------------------------------------------------------------------


def workload_step(overrides, runs, device):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"device={device}"])
    seeds = list(range(runs))
    task = build_task(cfg, device, seeds)
    state, solver = runner._initial_state(cfg, task, seeds, device)
    return stepper(solver, state)


def seconds_per_step(step, repeats, device) -> float:
    step()  # warm-up: allocator, autograd and vmap caches
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):  # best of: other processes only ever add time
        started = time.perf_counter()
        step()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def throughput_rows(workloads, runs_list, repeats, device):
    rows = []
    for name in workloads:
        base = None
        for runs in runs_list:
            seconds = seconds_per_step(
                workload_step(WORKLOADS[name], runs, device), repeats, device
            )
            per_run = runs / seconds
            base = per_run if base is None else base
            rows.append({
                "kind": "throughput", "workload": name, "runs": runs, "step_s": seconds,
                "steps_per_s_per_run": per_run, "ratio": per_run / base,
            })  # fmt: skip
            print(f"{name:24s} K={runs:<3d} {seconds * 1e3:9.2f} ms/step  per-run x{per_run / base:.2f}",
                  flush=True)  # fmt: skip
    return rows


# --- engine overhead against plain autograd ------------------------------------------------------


class PlainMLP:
    """One run of WeightedMLPProblem for the plain implementations: either the problem's own
    f and g (K = 1, the same computation as the engine's: the ratio is the engine's overhead),
    or the same MLP written without a run dimension (what a single-run script would do)."""

    def __init__(self, problem: WeightedMLPProblem, u, v, unbatched: bool):
        self.problem, self.unbatched = problem, unbatched
        take = (lambda t: t[0]) if unbatched else (lambda t: t)  # noqa: E731
        self.u = {k: take(t).clone().requires_grad_() for k, t in u.items()}
        self.v = {k: take(t).clone().requires_grad_() for k, t in v.items()}

    def losses(self, v, data):
        x, y = data
        hidden = torch.tanh(x @ v["w1"] + v["b1"])
        return F.cross_entropy(hidden @ v["w2"] + v["b2"], y, reduction="none")

    def f(self, v):
        if not self.unbatched:
            return self.problem.f(None, v, None).sum()
        return self.losses(v, self.problem.val).mean()

    def g(self, u, v):
        if not self.unbatched:
            return self.problem.g(u, v, None).sum()
        weights = torch.sigmoid(u["logits"])[self.problem.group]
        return (weights * self.losses(v, self.problem.train)).sum() / weights.sum()


def _grads(value, variables, **kwargs):
    grads = torch.autograd.grad(value, list(variables.values()), allow_unused=True, **kwargs)
    return [
        g if g is not None else torch.zeros_like(t)
        for g, t in zip(grads, variables.values(), strict=True)
    ]


def _apply(optimizer, variables, grads):
    for tensor, grad in zip(variables.values(), grads, strict=True):
        tensor.grad = grad.detach()
    optimizer.step()


def _descend(m, optimizer, steps, fixed_u):
    for _ in range(steps):
        _apply(optimizer, m.v, _grads(m.g(fixed_u, m.v), m.v))


def plain_penalty(m, cfg):
    opt_u = torch.optim.Adam(list(m.u.values()), lr=cfg.lr_u)
    opt_v = torch.optim.Adam(list(m.v.values()), lr=cfg.lr_v)
    nu = [torch.full_like(t, cfg.nu0) for t in m.v.values()]
    schedule = {"gamma": cfg.gamma0, "eps": cfg.eps0, "lam": cfg.lam0}

    def penalised(u):
        f, g = m.f(m.v), m.g(u, m.v)
        gv = _grads(g, m.v, create_graph=True)
        value = f + sum((n * d).sum() for n, d in zip(nu, gv, strict=True))
        return value + 0.5 * schedule["gamma"] * sum((d * d).sum() for d in gv), g, gv

    def step():
        fixed = {k: t.detach() for k, t in m.u.items()}
        for _ in range(cfg.T):
            value, g, _ = penalised(fixed)
            direction = _grads(value + schedule["lam"] * g, m.v)
            lower_sq = sum((d * d).sum() for d in direction)
            _apply(opt_v, m.v, direction)
        value, _, gv = penalised(m.u)
        direction = _grads(value, m.u)
        upper_sq = sum((d * d).sum() for d in direction)
        _apply(opt_u, m.u, direction)
        if float(upper_sq + lower_sq) < schedule["eps"] ** 2:
            schedule.update(gamma=schedule["gamma"] * cfg.c_gamma, eps=schedule["eps"] * cfg.c_eps,
                            lam=schedule["lam"] * cfg.c_lam)  # fmt: skip
            for n, d in zip(nu, gv, strict=True):
                n += schedule["gamma"] * d.detach()
            for optimizer in (opt_u, opt_v):
                for group in optimizer.param_groups:
                    group["lr"] *= cfg.lr_decay

    return step


def plain_approxgrad(m, cfg):
    opt_u = torch.optim.Adam(list(m.u.values()), lr=cfg.lr_u)
    opt_v = torch.optim.Adam(list(m.v.values()), lr=cfg.lr_v)
    q = [torch.zeros_like(t, requires_grad=True) for t in m.v.values()]
    opt_q = torch.optim.Adam(q, lr=cfg.lr_q)

    def step():
        _descend(m, opt_v, cfg.T, {k: t.detach() for k, t in m.u.items()})
        f = m.f(m.v)
        both = _grads(f, {**m.u, **{f"v.{k}": t for k, t in m.v.items()}}, retain_graph=True)
        grad_u_f, grad_v_f = both[: len(m.u)], both[len(m.u) :]
        gv = _grads(m.g(m.u, m.v), m.v, create_graph=True)

        def operator(x):
            hx = torch.autograd.grad(gv, list(m.v.values()), x, retain_graph=True)
            return [h + cfg.sigma * xi for h, xi in zip(hx, x, strict=True)]

        for _ in range(cfg.T2):
            current = [t.detach() for t in q]
            residual = [a - b for a, b in zip(operator(current), grad_v_f, strict=True)]
            for t, a in zip(q, operator(residual), strict=True):
                t.grad = 2.0 * a
            opt_q.step()
        mixed = torch.autograd.grad(gv, list(m.u.values()), [t.detach() for t in q])
        _apply(opt_u, m.u, [a - b for a, b in zip(grad_u_f, mixed, strict=True)])

    return step


def plain_rmd(m, cfg):
    opt_u = torch.optim.Adam(list(m.u.values()), lr=cfg.lr_u)

    def step():
        v = {k: t.detach().requires_grad_() for k, t in m.v.items()}
        for _ in range(cfg.T):
            gv = _grads(m.g(m.u, v), v, create_graph=True)
            v = {k: t - cfg.lr_v * d for (k, t), d in zip(v.items(), gv, strict=True)}
        _apply(opt_u, m.u, _grads(m.f(v), m.u))
        with torch.no_grad():
            for k, t in m.v.items():
                t.copy_(v[k])

    return step


def plain_fmd(m, cfg):
    from torch.func import grad, jvp, vmap

    opt_u = torch.optim.Adam(list(m.u.values()), lr=cfg.lr_u)
    size = sum(t.numel() for t in m.u.values())

    def lower_step(u, v):
        gv = grad(lambda v_: m.g(u, v_))(v)
        return {k: v[k] - cfg.lr_v * gv[k] for k in v}

    def step():
        u = {k: t.detach() for k, t in m.u.items()}
        v = {k: t.detach() for k, t in m.v.items()}
        eye = torch.eye(size, dtype=u["logits"].dtype)
        directions = {"logits": eye.view(size, *u["logits"].shape)}
        z = {k: t.new_zeros((size, *t.shape)) for k, t in v.items()}
        for _ in range(cfg.T):
            v_next, z = vmap(lambda du, zv, v=v: jvp(lower_step, (u, v), (du, zv)))(directions, z)
            v = {k: t[0] for k, t in v_next.items()}
        v_live = {k: t.requires_grad_() for k, t in v.items()}
        f = m.f(v_live)
        grad_u_f = _grads(f, m.u, retain_graph=True)
        grad_v_f = _grads(f, v_live)
        implicit = sum(
            z[k].reshape(size, -1) @ g.reshape(-1) for k, g in zip(v, grad_v_f, strict=True)
        )
        _apply(opt_u, m.u, [grad_u_f[0] + implicit])
        with torch.no_grad():
            for k, t in m.v.items():
                t.copy_(v[k])

    return step


def plain_alternating(m, cfg, update_u=True):
    opt_u = torch.optim.Adam(list(m.u.values()), lr=cfg.lr_u)
    opt_v = torch.optim.Adam(list(m.v.values()), lr=cfg.lr_v)

    def step():
        _descend(m, opt_v, cfg.T, {k: t.detach() for k, t in m.u.items()})
        if update_u:
            _apply(opt_u, m.u, _grads(m.f(m.v), m.u))

    return step


PLAIN = {
    "penalty": plain_penalty,
    "approxgrad": plain_approxgrad,
    "rmd": plain_rmd,
    "fmd": plain_fmd,
    "alternating": plain_alternating,
    "erm": lambda m, cfg: plain_alternating(m, cfg, update_u=False),
}


def overhead_rows(solvers, pairs, device):
    rows = []
    problem = WeightedMLPProblem(GROUPS, device=device, **MLP)
    for name in solvers:
        cfg = solver_config(name, OVERHEAD_T)
        u, v = problem.init_variables([torch.Generator().manual_seed(0)])
        solver = SOLVERS[name](problem, cfg)
        stream = one_run_stream(device)
        steps = {
            "engine": stepper(solver, solver.init(u, v, stream)),
            "plain": PLAIN[name](PlainMLP(problem, u, v, unbatched=False), solver.cfg),
            "unbatched": PLAIN[name](PlainMLP(problem, u, v, unbatched=True), solver.cfg),
        }
        median = interleaved_medians(steps, pairs, device)
        rows.append({
            "kind": "overhead", "workload": f"mlp_{name}_T{OVERHEAD_T}", "runs": 1,
            "step_s": median["engine"], "plain_step_s": median["plain"],
            "ratio": median["engine"] / median["plain"],
            "unbatched_step_s": median["unbatched"],
            "ratio_to_unbatched": median["engine"] / median["unbatched"],
        })  # fmt: skip
        print(f"overhead {name:12s} engine {median['engine'] * 1e3:8.2f} ms  plain "
              f"{median['plain'] * 1e3:8.2f} ms  ratio {median['engine'] / median['plain']:.3f}  "
              f"(unbatched plain {median['unbatched'] * 1e3:.2f} ms)", flush=True)  # fmt: skip
    return rows


# --- every solver's upper step in plain SGD steps -------------------------------------------------


def plain_sgd_step(problem, v):
    """One torch.optim.SGD step on g(u, v) for one run (u fixed): the unit of step_cost."""
    v = {k: t.clone().requires_grad_() for k, t in v.items()}
    optimizer = torch.optim.SGD(list(v.values()), lr=1e-3)
    u = {"logits": torch.zeros(1, problem.upper_dim, device=problem.device)}

    def step():
        optimizer.zero_grad(set_to_none=True)
        problem.g(u, v, None).sum().backward()
        optimizer.step()

    return step


def one_gradient(problem, u, v):
    """One gradient of g through the engine's autodiff (no update): the unit `gradients` counts."""

    def step():
        x = autodiff.leaves(v)
        autodiff.grad(problem.g(u, x, None), x)

    return step


def step_cost_rows(solvers, pairs, device):
    rows = []
    problem = WeightedMLPProblem(GROUPS, device=device, **MLP)
    cases = [(name, OVERHEAD_T) for name in solvers]
    # single-loop methods are also timed at their own declared T (soba, vpbgd: 1)
    cases += [(name, SOLVERS[name].params["T"].default) for name in solvers
              if SOLVERS[name].params["T"].default != OVERHEAD_T]  # fmt: skip
    for name, T in sorted(cases):
        solve = {"T2": T} if "T2" in SOLVERS[name].params else {}
        cfg = solver_config(name, T, **solve)
        u, v = problem.init_variables([torch.Generator().manual_seed(0)])
        solver = SOLVERS[name](problem, cfg)
        stream = one_run_stream(device)
        steps = {
            "solver": stepper(solver, solver.init(u, v, stream)),
            "sgd": plain_sgd_step(problem, v),
            "gradient": one_gradient(problem, u, v),
        }
        median = interleaved_medians(steps, pairs, device)
        ratio = median["solver"] / median["sgd"]
        rows.append({
            "kind": "step_cost", "workload": f"mlp_{name}_T{T}", "runs": 1, "T": T,
            "step_s": median["solver"], "sgd_step_s": median["sgd"], "ratio": ratio,
            "gradient_s": median["gradient"], "gradients": median["solver"] / median["gradient"],
        })  # fmt: skip
        print(f"step_cost {name:12s} T={T:<3d} {median['solver'] * 1e3:8.2f} ms = {ratio:6.1f} SGD "
              f"steps = {median['solver'] / median['gradient']:6.1f} gradients", flush=True)  # fmt: skip
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--pairs", type=int, default=20, help="timed engine/plain step pairs")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--cnn-runs", type=int, nargs="+", default=None,
                        help="K values for the CNN (default: those of --runs up to 4 on a CPU)")  # fmt: skip
    parser.add_argument("--solvers", nargs="+", default=list(PLAIN), choices=list(PLAIN))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--cost-solvers", nargs="+", default=sorted(SOLVERS),
                        choices=sorted(SOLVERS), help="solvers of the step_cost rows")  # fmt: skip
    parser.add_argument("--out", default="results/perf/engine_cpu.csv")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.pairs = 1, 2
    with devices.claim(args.device) as device:
        rows = []
        for workload in args.workloads if "throughput" in args.modes else []:
            runs = args.runs
            if workload.startswith("cnn"):
                limit = 4 if device.type == "cpu" else max(args.runs)
                runs = args.cnn_runs or [k for k in args.runs if k <= limit]
            rows += throughput_rows([workload], runs, args.repeats, device)
        if "overhead" in args.modes:
            rows += overhead_rows(args.solvers, args.pairs, device)
        if "step_cost" in args.modes:
            rows += step_cost_rows(args.cost_solvers, args.pairs, device)
    frame = pd.DataFrame(rows)
    frame["device"], frame["torch"] = device_name(device), torch.__version__
    frame["threads"] = torch.get_num_threads()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
