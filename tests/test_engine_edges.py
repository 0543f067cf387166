"""Edge cases of the engine found in review: random numbers at the end of their range, the
dropout shape probe on the network's own device, CG on an indefinite system, a batch under a
time budget, and seed/runs validation before any work."""

from __future__ import annotations

import subprocess
import sys

import torch
from omegaconf import OmegaConf
from solver_harness import compose_config

from bilevel_bench import keys, results
from bilevel_bench.hypergrad import ConjugateGradient
from bilevel_bench.models.networks import DropoutMasks, build_model


def test_uniforms_stay_below_one_in_float32_so_normals_stay_finite():
    largest = torch.tensor([2**31 - 1], dtype=torch.int64)  # the top of a hash's range
    assert keys.unit_interval(largest, torch.float32).item() < 1.0
    assert keys.unit_interval(largest, torch.float64).item() < 1.0
    u32 = keys.uniform(keys.run_keys([0]), (1000,), torch.float32)
    u64 = keys.uniform(keys.run_keys([0]), (1000,), torch.float64)
    assert torch.equal(u32.double(), u64)  # the same numbers whatever the dtype
    assert torch.isfinite(torch.log1p(-keys.unit_interval(largest, torch.float32))).all()


def test_dropout_masks_probe_the_network_on_its_own_device():
    cfg = OmegaConf.load("configs/model/mnist_cnn.yaml")
    network = build_model(cfg, (1, 28, 28), 10, verbose=False).to("meta")
    # the probe must not mix a CPU tensor with the network's (meta, standing in for cuda) ones
    masks = DropoutMasks(keys.run_keys([0, 1]), network, (4, 1, 28, 28))
    assert masks.kept(3).shape == (2, 4, 64, 12, 12)


def test_conjugate_gradients_take_negative_curvature_steps():
    """A nonconvex lower level can make H indefinite: CG must not stall at its warm start."""
    diagonal = torch.tensor([[-0.5, 3.0, 2.0]], dtype=torch.float64)
    rhs = {"q": torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)}
    solve = ConjugateGradient(iterations=3, lr=0.0)
    state, residual = solve.solve(lambda q: {"q": diagonal * q["q"]}, rhs, solve.init(rhs))
    torch.testing.assert_close(state["x"]["q"], rhs["q"] / diagonal)
    assert residual.item() < 1e-12


def test_under_a_time_budget_a_batch_is_hashed_apart_from_single_runs():
    plain = compose_config("runs=3")
    assert results.config_hash(plain, 1) == results.config_hash(compose_config("seed=1"))
    budgeted = compose_config("runs=3", "max_train_minutes=5")
    single = compose_config("seed=1", "max_train_minutes=5")
    assert results.config_hash(budgeted, 1) != results.config_hash(single)
    assert results.config_hash(budgeted, 1, runs=1) == results.config_hash(single)


def test_bad_seed_and_runs_stop_before_any_work(tmp_path):
    for override, message in (("runs=0", "runs must be an integer >= 1"),
                              ("seed=abc", "seed must be an integer >= 0")):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "bilevel_bench.cli", override, f"results_dir={tmp_path}",
             f"hydra.run.dir={tmp_path}/run"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "runs.csv").exists()
