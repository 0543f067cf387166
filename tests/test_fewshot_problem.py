"""The batched heads and the problem: numerics against a per-task loop, encoder passes, fresh
heads, per-run initialisation and episodes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fewshot_helpers import TINY, compose_config
from solver_harness import stream

from bilevel_bench import autodiff
from bilevel_bench.models.fewshot import Conv4, ResNetMini
from bilevel_bench.solvers import solver_class
from bilevel_bench.tasks import build_task

SEEDS = [3, 4]


def _generators(seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def _tiny_task(*overrides, seeds=SEEDS):
    cfg = compose_config(*TINY, *overrides)
    return cfg, build_task(cfg, torch.device("cpu"), seeds)


def _one_task_loss(x, w, b, y, scale):
    """One task's head written as a cosine of augmented vectors [x, 0.001] and [W_j, b_j]."""
    x_aug = torch.cat([x, torch.full_like(x[:, :1], 0.001)], dim=1)
    w_aug = torch.cat([w, b[None, :]], dim=0)
    logits = scale * F.normalize(x_aug, dim=1) @ F.normalize(w_aug, dim=0)
    return F.cross_entropy(logits, y)


def _looped_loss(features, heads, labels, scale):
    """[K]: one run and one task at a time, mean over each run's tasks."""
    runs = []
    for run in range(len(features)):
        tasks = zip(
            features[run], heads["weight"][run], heads["bias"][run], labels[run], strict=True
        )
        runs.append(torch.stack([_one_task_loss(*task, scale) for task in tasks]).mean())
    return torch.stack(runs)


def _penalty_terms(loss, features, v):
    """f-like value + |grad_v g|^2: first- and second-order terms as the penalty uses them."""
    gv = autodiff.grad(loss(features, v), v, create_graph=True)
    return loss(features, v) + autodiff.norm_sq(gv)


def test_batched_heads_match_a_per_task_loop_to_second_order(float64):
    _, task = _tiny_task("dtype=float64")
    problem = task.problem
    _, v = problem.init_variables(_generators(SEEDS))
    generator = torch.Generator().manual_seed(0)
    v = {
        k: (t + 0.1 * torch.randn(t.shape, generator=generator)).requires_grad_()
        for k, t in v.items()
    }
    runs, tasks = v["bias"].shape[:2]
    features = torch.randn(runs, tasks, 4, problem.feature_dim, generator=generator)
    features.requires_grad_()
    labels = torch.randint(0, problem.ways, (runs, tasks, 4), generator=generator)
    batched = lambda x, heads: problem.loss(x, heads, labels)  # noqa: E731
    looped = lambda x, heads: _looped_loss(x, heads, labels, problem.head_scale)  # noqa: E731
    torch.testing.assert_close(batched(features, v), looped(features, v), rtol=0, atol=1e-12)
    wrt = {"features": features, **v}
    grads = [autodiff.grad(_penalty_terms(loss, features, v), wrt) for loss in (batched, looped)]
    for name in wrt:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-10)


def _solver(solver_name, *overrides, seeds=SEEDS):
    cfg, task = _tiny_task(f"solver={solver_name}", *overrides, seeds=seeds)
    u, v = task.problem.init_variables(_generators(seeds))
    solver = solver_class(solver_name)(task.problem, cfg.solver)
    return task, solver, solver.init(u, v, stream(seeds))


@pytest.mark.parametrize(
    "solver_name",
    ["penalty", "approxgrad", "rmd", "aid_cg", "amigo", "bome", "f2sa", "soba", "stocbio", "vpbgd"],
)
def test_encoder_runs_once_per_bind_not_per_lower_step(solver_name):
    extra = ["solver.T2=2"] if solver_name in ("approxgrad", "aid_cg", "amigo", "stocbio") else []
    if solver_name in ("bome", "soba", "vpbgd"):  # they refuse fresh heads per meta-batch
        extra.append("task.reset_lower=false")
    task, solver, state = _solver(solver_name, "solver.T=5", *extra)
    calls = []
    task.problem.encoder.register_forward_hook(lambda *_: calls.append(1))
    new_state, _ = solver.step(state)
    # support + query, for at most one detached and one live bind (RMD binds once)
    assert 2 <= len(calls) <= 4
    assert any(not torch.equal(state["u"][k], new_state["u"][k]) for k in state["u"])


def test_heads_are_fresh_every_meta_iteration_and_keep_their_optimiser_state():
    task, solver, state = _solver("penalty")
    problem = task.problem
    upper, lower = problem.sample_batches(state["stream"])
    trained, _ = solver.update(state, upper, lower)
    assert (trained["v"]["bias"] != 0).any()  # the lower steps moved the heads
    after_one, _ = solver.step(state)
    after_two, _ = solver.step(after_one)
    for fresh in (after_one, after_two):
        assert (fresh["v"]["bias"] == 0).all()  # bias starts at zero
        assert fresh["v"]["weight"].std() < 0.02  # N(0, head_init_std = 0.01)
        assert (fresh["opt_v"]["exp_avg_sq"]["weight"] != 0).any()  # Adam's moments kept
    one, two = after_one["v"]["weight"], after_two["v"]["weight"]
    assert not torch.equal(one, two)  # new heads every meta-iteration...
    assert not torch.equal(one[0], one[1])  # ...and per run
    # a pure function of the stream: the same step of the same run gives the same heads
    _, again = problem.after_step(trained["u"], trained["v"], after_one["stream"])
    torch.testing.assert_close(again["weight"], one, rtol=0, atol=0)


def test_without_reset_lower_the_heads_carry_over():
    task, solver, state = _solver("penalty", "task.reset_lower=false")
    upper, lower = task.problem.sample_batches(state["stream"])
    trained, _ = solver.update(state, upper, lower)
    stepped, _ = solver.step(state)
    for name, tensor in trained["v"].items():
        torch.testing.assert_close(stepped["v"][name], tensor, rtol=0, atol=0)


def test_each_run_is_initialised_from_its_own_generator_alone():
    _, task = _tiny_task()
    problem = task.problem
    global_state = torch.random.get_rng_state()
    batch = problem.init_variables(_generators(SEEDS))
    assert torch.equal(torch.random.get_rng_state(), global_state)  # fork_rng left it alone
    for k, seed in enumerate(SEEDS):
        alone = problem.init_variables(_generators([seed]))
        for side in (0, 1):
            for name, tensor in alone[side].items():
                assert torch.equal(batch[side][name][k], tensor[0]), (seed, name)
    u = batch[0]
    assert not torch.equal(u["layers.0.weight"][0], u["layers.0.weight"][1])


def test_run_k_of_a_batch_draws_the_episodes_of_the_single_run_of_its_seed():
    _, task = _tiny_task()
    problem = task.problem
    batch_stream = {**stream(SEEDS), "step": torch.tensor([5, 5])}
    query, support = problem.sample_batches(batch_stream)
    assert support.images.shape[:3] == (2, 3, 3) and query.images.shape[:3] == (2, 3, 6)
    assert not torch.equal(support.images[0], support.images[1])
    for k, seed in enumerate(SEEDS):
        alone = problem.sample_batches({**stream([seed]), "step": torch.tensor([5])})
        for batched, single in zip((query, support), alone, strict=True):
            assert torch.equal(batched.images[k], single.images[0])
            assert torch.equal(batched.labels[k], single.labels[0])
    next_step = problem.sample_batches({**batch_stream, "step": torch.tensor([6, 6])})
    assert not torch.equal(next_step[1].images, support.images)


def test_encoders_give_the_authors_feature_sizes():
    with torch.no_grad():
        assert Conv4(1, 64)(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
        assert ResNetMini(3)(torch.zeros(2, 3, 84, 84)).shape == (2, 384)


def test_rmd_differentiates_the_query_loss_after_the_unrolled_head_steps(float64):
    """RMD's few-shot hypergradient is d/du of f(u, v_T(u)), v_T = T SGD steps on the support loss
    from the fresh heads: checked against central differences of that function, computed here by
    plain forward unrolling (issue 12: RMD's few-shot rows are not a differentiation bug)."""
    T, lr_v = 3, 0.1
    task, solver, state = _solver(
        "rmd", "dtype=float64", f"solver.T={T}", f"solver.lr_v={lr_v}", "solver.optimizer_u=sgd",
        "solver.lr_u=1.0", seeds=(5,),
    )  # fmt: skip
    problem = task.problem
    upper_batch, lower_batch = problem.sample_batches(state["stream"])
    stepped, _ = solver.update(state, upper_batch, lower_batch)
    # plain SGD with lr_u = 1 on unconstrained u: the step is minus the hypergradient
    hypergradient = {k: state["u"][k] - stepped["u"][k] for k in state["u"]}

    def unrolled_query_loss(u):
        support = problem.features(u, lower_batch.images)
        v = {k: t.clone() for k, t in state["v"].items()}
        for _ in range(T):
            v = {k: t.detach().requires_grad_() for k, t in v.items()}
            gv = autodiff.grad(problem.loss(support, v, lower_batch.labels).sum(), v)
            v = {k: v[k] - lr_v * gv[k] for k in v}
        return problem.loss(problem.features(u, upper_batch.images), v, upper_batch.labels).sum()

    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # three random directions over the whole encoder
        direction = {k: torch.randn(t.shape, generator=generator, dtype=t.dtype) for k, t in state["u"].items()}  # fmt: skip
        step = 1e-7  # small: ReLU and max-pool kinks lie within 1e-5 of u on tiny images
        with torch.no_grad():
            moved = [
                {k: state["u"][k] + sign * step * direction[k] for k in state["u"]}
                for sign in (1, -1)
            ]
        plus, minus = (unrolled_query_loss(u).item() for u in moved)
        numeric = (plus - minus) / (2 * step)
        analytic = sum((hypergradient[k] * direction[k]).sum() for k in direction).item()
        assert analytic == pytest.approx(numeric, rel=1e-6)
