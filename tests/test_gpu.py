"""On a CUDA device: whole upper steps captured as CUDA graphs, no host sync in a step, runs=K on
the GPU, and the precision switches. Skipped without one (scripts/reproduce_gpu.sh runs them on
the H200 first, before any measurement builds on them).

Tolerances:
- captured vs eager: 1e-5 relative (to each tensor's largest value) after 50 upper steps. A
  replay runs the eager step's kernels on the same inputs; what may differ is only the order of
  floating-point sums inside kernels that choose their algorithm per stream (cuBLAS workspaces).
- runs=K vs single runs, fp32: 1e-3 relative on the variables and the upper loss after a few
  upper steps, accuracy within one example. K runs go through other kernels than one (grouped
  convolutions, batched matrix products) whose sums are ordered differently; float32 rounding
  differences of about 1e-7 grow through the training steps. (On the CPU in float64 the same
  comparison holds to 1e-9: tests/test_runs_axis.py.)
"""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch
from solver_harness import compose_config
from test_runs_axis import PROBLEMS as RUNS_AXIS_PROBLEMS
from tiny_tasks import DENOISE, SMALL_CNN, epochs, steps

from bilevel_bench import capture, precision, results, runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.models import batched
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks import build_task

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (scripts/reproduce_gpu.sh runs these on a GPU)",
)

CAPTURE_STEPS = 50
CAPTURE_RELATIVE = 1e-5
RUNS_RELATIVE = 1e-3
ONE_EXAMPLE = {"test_acc": 100 / 300 + 1e-3, "val_acc": 100 / 100 + 1e-3}  # dataset=fake: 300, 100
PROBLEMS = {
    "quadratic": ["dataset=quadratic", "solver.T=3"],
    "smd20": ["dataset=smd20", "solver.T=3"],
    "denoise_cnn": [*DENOISE, *epochs(20, 10), *SMALL_CNN],
}
EXTRA = {"approxgrad": ["solver.T2=2"]}


def cuda():
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture
def deterministic_cudnn():
    """cuDNN algorithms without atomics for the captured-vs-eager comparisons: else two eager
    runs could already differ in the last bits, and 50 steps would amplify that."""
    previous = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous


def initial(overrides, seeds=(0, 1)):
    device = cuda()
    cfg = compose_config(*overrides, f"device={device}")
    runner.validate(cfg)
    task = build_task(cfg, device, list(seeds))
    state, solver = runner._initial_state(cfg, task, list(seeds), device)
    return task, state, solver


def solver_cases(problems):
    for problem in problems:
        for solver in sorted(SOLVERS):
            overrides = [*PROBLEMS[problem], f"solver={solver}", *EXTRA.get(solver, [])]
            if problem.startswith("denoise") and not SOLVERS[solver].updates_upper:
                overrides.append("task.fit_on=noisy")
            yield pytest.param(overrides, id=f"{solver}-{problem}")


def assert_close(got, expected, relative, where):
    if isinstance(expected, dict):
        for key in expected:
            assert_close(got[key], expected[key], relative, f"{where}.{key}")
        return
    if not expected.is_floating_point():
        assert torch.equal(got, expected), where
        return
    scale = max(expected.abs().max().item(), 1e-30) if expected.numel() else 1.0
    difference = (got - expected).abs().max().item() if expected.numel() else 0.0
    assert difference <= relative * scale, f"{where}: {difference:.3g} (scale {scale:.3g})"


def test_a_double_backward_step_can_be_captured_and_replayed():
    """The building block, checked before anything builds on it: gradient steps through a
    Hessian-vector product (torch.autograd.grad with create_graph) inside torch.cuda.graph."""
    device = cuda()
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(64, 64, device=device, generator=generator)
    x0 = torch.randn(64, device=device, generator=generator)

    def step(state):
        x = state["x"].detach().requires_grad_()
        value = torch.tanh(a @ x).pow(2).sum()
        (gradient,) = torch.autograd.grad(value, x, create_graph=True)
        (hvp,) = torch.autograd.grad(gradient @ gradient.detach(), x)
        return {"x": (x - 0.01 * gradient - 0.001 * hvp).detach()}, {"value": value.detach()}

    eager = {"x": x0.clone()}
    for _ in range(10):
        eager, _ = step(eager)
    static = capture.StaticStep(step, {"x": x0.clone()}, graphs=True)
    replayed = {"x": x0.clone()}
    for _ in range(10):
        replayed, diagnostics = static(replayed)
    torch.cuda.synchronize()
    assert_close(replayed, eager, CAPTURE_RELATIVE, "x")
    assert diagnostics["value"].isfinite().all()


@pytest.mark.parametrize("overrides", list(solver_cases(PROBLEMS)))
def test_captured_steps_equal_eager_steps(overrides, deterministic_cudnn):
    try:
        _, state, solver = initial(overrides)
    except ConfigError:  # a solver that refuses the problem (fmd above its memory budget)
        return
    eager = capture.clone(state)
    for _ in range(CAPTURE_STEPS):
        eager, eager_diagnostics = solver.step(eager)
    stepper = capture.Stepper(solver, capture=True)
    replayed = capture.clone(state)
    for _ in range(CAPTURE_STEPS):
        replayed, diagnostics = stepper.step(replayed)
    torch.cuda.synchronize()
    assert stepper.captured, "the step fell back to eager (see the log line)"
    assert_close(replayed, eager, CAPTURE_RELATIVE, "state")
    assert_close(diagnostics, eager_diagnostics, CAPTURE_RELATIVE, "diagnostics")


@pytest.mark.parametrize("overrides", list(solver_cases(["quadratic", "denoise_cnn"])))
@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_no_step_synchronises_captured_or_eager(overrides, name):
    """Eager steps (bf16 too) and graph replays never wait for the device."""
    try:
        _, state, solver = initial(overrides)
    except ConfigError:
        return
    with precision.applied(name, cuda()):
        eager = capture.Stepper(solver, capture=False)
        state, _ = eager.step(state)  # lazy initialisation may synchronise: not counted
        captured = capture.Stepper(solver, capture=True)
        replayed, _ = captured.step(capture.clone(state))
        torch.cuda.synchronize()
        assert captured.captured
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):
                state, _ = eager.step(state)
                replayed, _ = captured.step(replayed)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_step_that_cannot_be_captured_falls_back_to_eager(caplog):
    """A host read inside the step fails the capture; the run steps eagerly, one line says why,
    and the device is fine afterwards."""
    _, state, solver = initial([*PROBLEMS["quadratic"], "solver=penalty"])

    class Syncing:
        name = "syncing"

        def step(self, state):
            new_state, diagnostics = solver.step(state)
            if new_state["u"]["u"].sum() > 1e30:  # a host read: not capturable
                raise AssertionError("unreachable")
            return new_state, diagnostics

    stepper = capture.Stepper(Syncing(), capture=True)
    with caplog.at_level(logging.WARNING, logger="bilevel_bench.capture"):
        got, _ = stepper.step(capture.clone(state))
        got, _ = stepper.step(got)
    expected, _ = solver.step(capture.clone(state))
    expected, _ = solver.step(expected)
    assert stepper.captured is False
    assert len([r for r in caplog.records if r.name == "bilevel_bench.capture"]) == 1
    assert_close(got, expected, CAPTURE_RELATIVE, "state")


def test_a_cuda_run_records_capture_and_precision(tmp_path):
    for name in ("fp32", "tf32", "bf16"):
        cfg = compose_config(
            *PROBLEMS["denoise_cnn"], *epochs(2, 1), "solver=penalty", f"precision={name}",
            f"device={cuda()}", f"results_dir={tmp_path}", "progress=false",
        )  # fmt: skip
        (row,) = runner.run(cfg, tmp_path / name)
        assert row["status"] == "ok" and row["capture"] is True and row["precision"] == name
    cfg = compose_config(
        *PROBLEMS["quadratic"], "engine.capture=off", f"device={cuda()}", f"results_dir={tmp_path}"
    )
    (row,) = runner.run(cfg, tmp_path / "eager")
    assert row["capture"] is False
    assert len(results.read_rows(tmp_path / results.RUNS_CSV)) == 4


def test_tf32_is_set_for_the_run_and_restored():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    new_api = hasattr(matmul, "fp32_precision")

    def settings():
        if new_api:
            return matmul.fp32_precision, cudnn.conv.fp32_precision
        return matmul.allow_tf32, cudnn.allow_tf32

    before = settings()
    with precision.applied("tf32", cuda()):
        assert settings() == (("tf32", "tf32") if new_api else (True, True))
    with precision.applied("fp32", cuda()):
        assert settings() == (("ieee", "ieee") if new_api else (False, False))
    assert settings() == before


def test_bf16_forward_passes_on_cuda():
    task, state, _ = initial([*PROBLEMS["denoise_cnn"], "solver=penalty"])
    upper, _ = task.problem.sample_batches(state["stream"])
    full = batched.forward(task.problem.model, state["v"], upper.x, upper.dropout)
    with precision.applied("bf16", cuda()):
        low = batched.forward(task.problem.model, state["v"], upper.x, upper.dropout)
    assert low.dtype == torch.float32 and not torch.equal(low, full)
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.05)


RUNS_CASES = [
    *(
        pytest.param(
            ["dataset=quadratic", *steps(4, 2), "solver.T=3", f"solver={s}", *EXTRA.get(s, [])],
            id=f"{s}-quadratic",
        )  # fmt: skip
        for s in sorted(SOLVERS)
    ),
    *(
        pytest.param(
            [
                *RUNS_AXIS_PROBLEMS["denoise_cnn"],
                f"solver={s}",
                *EXTRA.get(s, []),
                *(["task.fit_on=noisy"] if s == "erm" else []),
            ],
            id=f"{s}-denoise_cnn",
        )  # fmt: skip
        for s in ("penalty", "approxgrad", "rmd", "erm")
    ),
]


def execute(overrides, seeds, tmp_path):
    cfg = compose_config(*overrides, f"device={cuda()}", f"results_dir={tmp_path}")
    runner.validate(cfg)
    dirs = runner.run_dirs_for(tmp_path / f"run{seeds[0]}x{len(seeds)}", seeds)
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    with precision.applied("fp32", cuda()):  # IEEE fp32 whatever the machine's defaults
        return runner.execute(cfg, seeds, cuda(), dirs)


@pytest.mark.parametrize("overrides", RUNS_CASES)
def test_runs_k_equals_single_runs_on_cuda(overrides, tmp_path):
    seeds = [3, 4, 5, 6]
    try:
        batch = execute(overrides, seeds, tmp_path)
    except ConfigError as refusal:
        with pytest.raises(ConfigError, match=re.escape(str(refusal)[:12])):
            execute(overrides, seeds[:1], tmp_path)
        return
    assert not batch.progress.diverged and batch.captured
    for k, seed in enumerate(seeds):
        single = execute(overrides, [seed], tmp_path)
        for side in ("u", "v"):
            for name, tensor in single.state[side].items():
                assert_close(
                    batch.state[side][name][k], tensor[0], RUNS_RELATIVE, f"{seed} {side}.{name}"
                )
        expected, got = single.metrics(0), batch.metrics(k)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if math.isnan(value):
                assert math.isnan(got[key]), key
            elif key in ONE_EXAMPLE:  # percentages: one example of the fake test / val set
                assert abs(got[key] - value) <= ONE_EXAMPLE[key], (seed, key)
            elif key == "upper_loss":
                assert got[key] == pytest.approx(value, rel=RUNS_RELATIVE, abs=1e-6), seed
