"""The functional optimisers reproduce torch.optim; solver hyper-parameters are declared once
(default, check, doc) and become the Hydra config; unknown keys fail with their name."""

from __future__ import annotations

import pytest
import torch
from solver_harness import compose_config

from bilevel_bench import optim, runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.solvers import SOLVERS, Param, Solver, register


def _torch_trajectory(optimizer_class, start, gradients, lr):
    param = start.clone().requires_grad_()
    optimizer = optimizer_class([param], lr=lr)
    for gradient in gradients:
        param.grad = gradient.to_sparse() if optimizer_class is torch.optim.SparseAdam else gradient
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize(
    "name, reference",
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("sparse_adam", torch.optim.SparseAdam)],
)
def test_functional_optimisers_match_torch_optim(name, reference):
    """Adam and lazy Adam bit for bit; SGD to one rounding (torch fuses its multiply-add)."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(6, 5, generator=generator)
    gradients = []
    for step in range(30):
        gradient = torch.randn(6, 5, generator=generator)
        if name == "sparse_adam":  # a minibatch touches some rows only
            gradient[torch.arange(6) % 3 != step % 3] = 0
        gradients.append(gradient)
    expected = _torch_trajectory(reference, start, gradients, lr=0.01)
    functional = optim.make(name)
    params = {"w": start[None]}  # one run
    state = functional.init(params, 0.01)
    for gradient in gradients:
        params, state = functional.update(params, {"w": gradient[None]}, state)
    if name == "sgd":
        torch.testing.assert_close(params["w"][0], expected, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(params["w"][0], expected)


def test_lazy_adam_leaves_untouched_coordinates_and_their_moments_alone():
    lazy = optim.make("sparse_adam")
    params = {"w": torch.zeros(1, 4)}
    state = lazy.init(params, 0.1)
    params, state = lazy.update(params, {"w": torch.tensor([[1.0, 0, 0, 0]])}, state)
    params, state = lazy.update(params, {"w": torch.tensor([[0.0, 1, 0, 0]])}, state)
    assert params["w"][0, 2:].tolist() == [0, 0] and state["exp_avg"]["w"][0, 2:].tolist() == [0, 0]
    first = params["w"][0, 0].item()
    params, state = lazy.update(params, {"w": torch.tensor([[0.0, 0, 0, 1]])}, state)
    assert params["w"][0, 0].item() == first  # moved at step 1 only, then left alone
    dense = optim.make("adam")
    dense_params = {"w": torch.zeros(1, 4)}
    dense_state = dense.init(dense_params, 0.1)
    for gradient in ([[1.0, 0, 0, 0]], [[0.0, 1, 0, 0]], [[0.0, 0, 0, 1]]):
        dense_params, dense_state = dense.update(
            dense_params, {"w": torch.tensor(gradient)}, dense_state
        )
    assert dense_params["w"][0, 0] != params["w"][0, 0]  # dense Adam moved it again


def test_every_learning_rate_is_per_run():
    sgd = optim.make("sgd")
    params = {"w": torch.ones(2, 3)}
    state = sgd.init(params, 0.5)
    state = {**state, "lr": torch.tensor([0.5, 0.25], dtype=torch.float64)}
    params, _ = sgd.update(params, {"w": torch.ones(2, 3)}, state)
    assert params["w"].tolist() == [[0.5] * 3, [0.75] * 3]


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_config_comes_from_its_declarations(name):
    cls = SOLVERS[name]
    cfg = compose_config(f"solver={name}", "~tuned").solver  # no task's tuned values
    assert set(cfg) == {"name", *cls.params}
    for key, param in cls.params.items():
        assert cfg[key] == param.default, key
        param.check(f"solver.{key}", param.default)  # every default passes its own check
        assert param.doc.strip(), f"{name}.{key} has no doc"


def test_tuned_values_replace_defaults_and_the_command_line_replaces_both():
    cfg = compose_config("task=denoise", "solver=penalty")
    assert cfg.solver.T == 20 and cfg.solver.gamma0 == 0.01  # tuned/denoise.yaml; declared
    assert compose_config("task=denoise", "solver=penalty", "solver.T=3").solver.T == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+solver.gama0=1"], r"solver\.gama0 is not a hyper-parameter of solver=penalty"),
        (["+tuned.penalty.lr=1"], r"configs/tuned/synthetic\.yaml: penalty\.lr is not a hyper"),
        (["+tuned.newton.T=1"], r"configs/tuned/synthetic\.yaml: 'newton' is not a solver"),
        (["runs=0"], r"runs must be an integer >= 1"),
        (["device=cpux"], r"device='cpux' is not auto, cpu, cuda or cuda:N"),
    ],
)
def test_unknown_keys_stop_the_run_with_their_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        runner.validate(compose_config(*overrides))


def test_a_solver_registered_from_outside_gets_a_config_and_runs(tmp_path):
    @register
    class HalfAlternating(Solver):
        """Alternating with one lower step: the generic machinery, no other edit."""

        name = "test_half_alternating"
        params = {**Solver.params, "T": Param(1, Solver.params["T"].check, "lower steps")}

        def update(self, state, upper_batch, lower_batch):
            bound = self.bind_fixed_u(state, upper_batch, lower_batch)
            state, _ = self.descend_lower(state, bound.g, self.T)
            return state, {}

    try:
        cfg = compose_config("solver=test_half_alternating", "task.iters=3",
                             f"results_dir={tmp_path}")  # fmt: skip
        assert cfg.solver.T == 1
        (row,) = runner.run(cfg, tmp_path / "run")
        assert row["status"] == "ok" and row["solver"] == "test_half_alternating"
    finally:
        SOLVERS.pop("test_half_alternating")
