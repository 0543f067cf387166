"""The batched heads and the problem: numerics against a per-task loop, encoder passes, resets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fewshot_helpers import TINY, compose_config

from bilevel_bench import autodiff, runner
from bilevel_bench.models.fewshot import Conv4, ResNetMini
from bilevel_bench.solvers import solver_class
from bilevel_bench.tasks import build_task


def _per_task_loss(features, weight, bias, labels, scale):
    """One task at a time, the head written as a cosine of augmented vectors."""
    losses = []
    for x, w, b, y in zip(features, weight, bias, labels, strict=True):
        x_aug = torch.cat([x, torch.full_like(x[:, :1], 0.001)], dim=1)
        w_aug = torch.cat([w, 0.001 * b[None, :] / 0.001], dim=0)  # column j = [W_j, b_j]
        logits = scale * F.normalize(x_aug, dim=1) @ F.normalize(w_aug, dim=0)
        losses.append(F.cross_entropy(logits, y))
    return torch.stack(losses).mean()


def _penalty_terms(loss, features, v):
    """f-like value + |grad_v g|^2: first- and second-order terms as the penalty uses them."""
    gv = autodiff.grad(loss(features, v), v, create_graph=True)
    return loss(features, v) + autodiff.norm_sq(gv)


def test_batched_heads_match_a_per_task_loop_to_second_order():
    cfg = compose_config(*TINY, "dtype=float64")
    torch.set_default_dtype(torch.float64)
    try:
        generator = runner.seed_everything(0)
        task = build_task(cfg, torch.device("cpu"), generator)
        problem = task.problem
        _, v = problem.init_variables(generator)
        v = {k: (t + 0.1 * torch.randn_like(t)).requires_grad_() for k, t in v.items()}
        features = torch.randn(3, 4, problem.feature_dim, requires_grad=True)
        labels = torch.randint(0, 3, (3, 4))
        batched = lambda x, heads: problem.loss(x, heads, labels)  # noqa: E731
        looped = lambda x, heads: _per_task_loss(  # noqa: E731
            x, heads["weight"], heads["bias"], labels, problem.head_scale
        )
        wrt = {"features": features, **v}
        for value in (batched, looped):
            assert value(features, v).dtype == torch.float64
        grads = [
            autodiff.grad(_penalty_terms(value, features, v), wrt) for value in (batched, looped)
        ]
        for name in wrt:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-6)
        torch.testing.assert_close(batched(features, v), looped(features, v), rtol=0, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def _tiny_solver(solver_name, *overrides):
    cfg = compose_config(*TINY, f"solver={solver_name}", *overrides)
    generator = runner.seed_everything(0)
    task = build_task(cfg, torch.device("cpu"), generator)
    u, v = (runner._leaves(x, torch.device("cpu")) for x in task.problem.init_variables(generator))
    solver = solver_class(cfg.solver.name)(task.problem, u, v, cfg.solver, generator)
    return task, solver, u, v


@pytest.mark.parametrize("solver_name", ["penalty", "approxgrad", "rmd"])
def test_encoder_runs_once_per_bind_not_per_lower_step(solver_name):
    extra = ["solver.T2=2"] if solver_name == "approxgrad" else []
    task, solver, u, v = _tiny_solver(solver_name, "solver.T=5", *extra)
    calls = []
    task.problem.encoder.register_forward_hook(lambda *_: calls.append(1))
    u_before = {k: t.detach().clone() for k, t in u.items()}
    solver.step()
    # support + query, for at most one detached and one live bind (RMD binds once)
    assert len(calls) <= 4
    assert any(not torch.equal(u_before[k], u[k]) for k in u)


def test_heads_are_fresh_every_meta_iteration():
    task, solver, u, v = _tiny_solver("penalty")
    solver.step()
    assert v["bias"].abs().sum() > 0  # the lower steps moved the heads
    task.after_step(1, u, v)
    assert v["bias"].abs().sum() == 0  # re-initialised in place (bias starts at zero)
    assert v["weight"].std() < 0.02  # N(0, head_init_std = 0.01)


def test_encoders_give_the_authors_feature_sizes():
    with torch.no_grad():
        assert Conv4(1, 64)(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
        assert ResNetMini(3)(torch.zeros(2, 3, 84, 84)).shape == (2, 384)
