"""engine.capture and precision on a CPU: the static-buffer step that CUDA graphs replay equals the
plain step (run eagerly here; tests/test_gpu.py replays it on a GPU), the fallback to eager
steps, bf16 autocast of the networks, the config checks, and config hashes that the new keys
leave unchanged at their defaults."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import open_dict
from solver_harness import compose_config
from tiny_tasks import DENOISE, SMALL_CNN, epochs, steps

from bilevel_bench import capture, precision, results, runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.models import batched
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks import build_task
from bilevel_bench.tasks.denoise import weights_of

CPU = torch.device("cpu")
PROBLEMS = {
    "quadratic": ["dataset=quadratic", *steps(4, 2), "solver.T=3"],
    "denoise_cnn": [*DENOISE, *epochs(1, 1), *SMALL_CNN],
}


def initial(overrides, seeds=(0, 1)):
    cfg = compose_config(*overrides, "device=cpu")
    runner.validate(cfg)
    task = build_task(cfg, CPU, list(seeds))
    state, solver = runner._initial_state(cfg, task, list(seeds), CPU)
    return cfg, task, state, solver


def solver_cases():
    for problem in sorted(PROBLEMS):
        for solver in sorted(SOLVERS):
            overrides = [*PROBLEMS[problem], f"solver={solver}"]
            if problem.startswith("denoise") and not SOLVERS[solver].updates_upper:
                overrides.append("task.fit_on=noisy")
            yield pytest.param(overrides, id=f"{solver}-{problem}")


def assert_same(a, b, where="state"):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    else:
        assert torch.equal(a, b), where


# --- the static-buffer step --------------------------------------------------------------------


@pytest.mark.parametrize("overrides", list(solver_cases()))
def test_the_buffered_step_equals_the_plain_step(overrides):
    """What a CUDA graph replays (step on buffer A into buffer B and back), run eagerly: the same
    numbers, bit for bit, as the solver's own steps, also across a state the runner replaced
    (frozen runs) between two steps."""
    try:
        _, _, state, solver = initial(overrides)
    except ConfigError:  # a solver that refuses the problem (fmd above its memory budget)
        return
    plain, static = state, capture.StaticStep(solver.step, state, graphs=False)
    buffered = state
    for step in range(4):
        plain, plain_diagnostics = solver.step(plain)
        previous = buffered
        buffered, diagnostics = static(buffered)
        assert_same(buffered, plain)
        assert_same(diagnostics, plain_diagnostics, "diagnostics")
        if step == 1:  # the runner freezes run 1: old state for it, new for run 0
            alive = torch.tensor([True, False])
            plain = runner.freeze(alive, plain, previous)
            buffered = runner.freeze(alive, buffered, previous)
            assert_same(buffered, plain)


def test_the_old_state_outlives_the_next_step():
    """The runner reads the state it passed in after the step (to freeze diverged runs): the
    buffers keep it until the call after next."""
    _, _, state, solver = initial(PROBLEMS["quadratic"] + ["solver=penalty"])
    static = capture.StaticStep(solver.step, state, graphs=False)
    first, _ = static(state)
    kept = capture.clone(first)
    second, _ = static(first)
    assert_same(first, kept)  # still intact after the second call
    assert not capture.same_leaves(first, second)


def test_a_step_that_changes_the_state_cannot_be_buffered():
    def grows(state):
        return {"x": torch.cat([state["x"], state["x"]])}, {}

    def python_counter(state):
        return {"x": state["x"], "n": state["n"] + 1}, {}

    with pytest.raises(capture.CaptureUnsupported, match="state.x changes"):
        capture.StaticStep(grows, {"x": torch.ones(2)}, graphs=False)({"x": torch.ones(2)})
    with pytest.raises(capture.CaptureUnsupported, match="Python value"):
        state = {"x": torch.ones(2), "n": 0}
        capture.StaticStep(python_counter, state, graphs=False)(state)


def test_capture_falls_back_to_eager_steps_with_one_log_line(caplog):
    """A step that cannot be captured (here: a CPU state) runs eagerly; one line says why."""
    _, _, state, solver = initial(PROBLEMS["quadratic"] + ["solver=penalty"])
    stepper = capture.Stepper(solver, capture=True)
    with caplog.at_level(logging.WARNING, logger="bilevel_bench.capture"):
        new_state, _ = stepper.step(state)
        stepper.step(new_state)
    expected, _ = solver.step(state)
    assert_same(new_state, expected)
    assert stepper.captured is False
    lines = [r for r in caplog.records if r.name == "bilevel_bench.capture"]
    assert len(lines) == 1 and "not on a CUDA device" in lines[0].getMessage()


def test_the_row_records_capture_and_precision(tmp_path):
    cfg = compose_config(
        *PROBLEMS["quadratic"], "device=cpu", f"results_dir={tmp_path}", "progress=false"
    )
    (row,) = runner.run(cfg, tmp_path / "run")
    assert row["capture"] is False and row["precision"] == "fp32" and row["status"] == "ok"
    (on_disk,) = results.read_rows(tmp_path / results.RUNS_CSV)
    assert on_disk["capture"] == "False" and on_disk["precision"] == "fp32"


def test_rows_append_to_a_runs_csv_written_before_the_new_columns(tmp_path):
    path = tmp_path / results.RUNS_CSV
    old_header = [c for c in results.COLUMNS if c not in ("capture", "precision")]
    path.write_text(",".join(old_header) + "\n" + ",".join("x" for _ in old_header) + "\n")
    results.append_row(path, results.new_row(task="t", capture=True, precision="bf16"))
    old, new = results.read_rows(path)
    assert old["capture"] == "" and old["task"] == "x"
    assert new["capture"] == "True" and new["precision"] == "bf16"


# --- config checks and hashes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["precision=fp16"], "precision must be one of fp32, tf32, bf16"),
        (["engine.capture=yes"], "engine.capture must be one of auto, on, off"),
        (["+engine.graphs=true"], "engine.graphs is not an engine option"),
        (["precision=bf16", "dtype=float64"], "use dtype=float32"),
    ],
)
def test_bad_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        runner.validate(compose_config(*overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["engine.capture=on"], "engine.capture=on needs a CUDA device"),
        (["precision=tf32"], "precision=tf32 governs CUDA"),
    ],
)
def test_cuda_only_settings_are_refused_on_a_cpu_before_any_row(tmp_path, overrides, message):
    cfg = compose_config(
        *PROBLEMS["quadratic"], *overrides, "device=cpu", f"results_dir={tmp_path}"
    )
    with pytest.raises(ConfigError, match=message):
        runner.run(cfg, tmp_path / "run")
    assert not (tmp_path / results.RUNS_CSV).exists()


def test_auto_capture_is_off_on_a_cpu():
    assert not capture.wanted(compose_config(), CPU)
    assert not capture.wanted(compose_config("engine.capture=off"), CPU)


def test_the_new_keys_leave_existing_hashes_unchanged():
    """Rows written before precision and engine.capture existed keep their hashes (skip-if-done,
    resume, tables): at their defaults the keys are left out; capture is never hashed."""
    for overrides in ([], PROBLEMS["denoise_cnn"]):
        current = compose_config(*overrides)
        before = compose_config(*overrides)
        with open_dict(before):
            del before["precision"], before["engine"]
        assert results.config_hash(current) == results.config_hash(before)
        assert results.group_hash(current) == results.group_hash(before)
        off = compose_config(*overrides, "engine.capture=off")
        assert results.config_hash(off) == results.config_hash(current)
        for name in ("tf32", "bf16"):
            other = compose_config(*overrides, f"precision={name}")
            assert results.config_hash(other) != results.config_hash(current)


# --- bf16 autocast of the networks -------------------------------------------------------------


def test_bf16_runs_the_networks_in_bfloat16_and_returns_float32():
    _, task, state, _ = initial(PROBLEMS["denoise_cnn"] + ["solver=penalty"])
    problem = task.problem
    upper, _ = problem.sample_batches(state["stream"])
    v = {k: t.clone().requires_grad_() for k, t in state["v"].items()}
    full = batched.forward(problem.model, v, upper.x, upper.dropout)
    with precision.applied("bf16", CPU):
        low = batched.forward(problem.model, v, upper.x, upper.dropout)
        (gradient,) = torch.autograd.grad(low.square().sum(), [v["0.weight"]])
    assert precision.network_dtype() is None  # restored after the block
    assert low.dtype == full.dtype == torch.float32 and gradient.dtype == torch.float32
    assert not torch.equal(low, full)  # it did compute in bfloat16 ...
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.05)  # ... close to float32


def test_bf16_training_on_fake_denoise_is_close_to_fp32(tmp_path):
    """Two epochs of penalty on the fake denoising task (pre-training, agreement init, 10 upper
    steps): the bf16 run ends near the fp32 one. bf16 keeps 8 mantissa bits, so the networks'
    parameters agree to about 1e-3 relative here, not bit for bit. (Longer runs drift apart as
    any perturbed training does; whether bf16 matches fp32's accuracy within the seeds' s.d. is
    measured on MNIST on a GPU, scripts/reproduce_gpu.sh.)"""
    outcomes = {}
    for name in ("fp32", "bf16"):
        cfg = compose_config(
            *PROBLEMS["denoise_cnn"], *epochs(2, 1), "solver=penalty", f"precision={name}",
            "device=cpu", f"results_dir={tmp_path}", "task.retrain=false",
        )  # fmt: skip
        runner.validate(cfg)
        directory = tmp_path / name
        directory.mkdir()
        outcomes[name] = runner.execute(cfg, [0], CPU, [directory])
    full, low = outcomes["fp32"], outcomes["bf16"]
    for key, tensor in full.state["v"].items():
        other = low.state["v"][key]
        assert other.dtype == torch.float32
        assert (other - tensor).norm() <= 1e-2 * tensor.norm(), key
    assert not torch.equal(low.state["v"]["0.weight"], full.state["v"]["0.weight"])
    weights = [weights_of(outcome.state["u"]["logits"]) for outcome in (full, low)]
    assert (weights[0] - weights[1]).abs().mean() <= 1e-2
    metrics_full, metrics_low = full.metrics(0), low.metrics(0)
    assert abs(metrics_full["test_acc"] - metrics_low["test_acc"]) <= 2.0
    assert metrics_low["upper_loss"] == pytest.approx(metrics_full["upper_loss"], rel=1e-2)
