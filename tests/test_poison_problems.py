"""Poisoning problems: constraints at every step, fresh retraining, data splits, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from poison_helpers import FAKE_LINEAR, compose_config, one_thread

from bilevel_bench import runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.data import poison_sets
from bilevel_bench.data.errors import DatasetError
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks import build_task


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def build(overrides, tmp_path, seed=0):
    cfg = compose_config(overrides, tmp_path)
    generator = runner.seed_everything(seed)
    task = build_task(cfg, torch.device("cpu"), generator)
    u, v = (
        {k: t.clone().requires_grad_() for k, t in x.items()}
        for x in task.problem.init_variables(generator)
    )
    return cfg, task, u, v, generator


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_poisons_stay_in_the_box_at_every_step(solver, tmp_path):
    # a huge upper step would throw pixels far outside [0, 1] without the projection
    cfg, task, u, v, generator = build(
        [*FAKE_LINEAR, f"solver={solver}", "solver.lr_u=50.0", "solver.optimizer_u=sgd"], tmp_path
    )
    start = u["poisons"].detach().clone()
    instance = SOLVERS[solver](task.problem, u, v, cfg.solver, generator)
    for _ in range(3):
        instance.step()
        poisons = u["poisons"].detach()
        assert poisons.min() >= 0.0 and poisons.max() <= 1.0
    # alternating: its grad_u f is zero on this problem (f does not depend on the poisons)
    if SOLVERS[solver].updates_upper and solver != "alternating":
        assert not torch.equal(u["poisons"].detach(), start)


def test_clean_label_poison_stays_in_box_and_ball(tmp_path):
    npz = poison_sets.write_fake_dogfish(tmp_path / "df.npz", side=12, train_per_class=12)
    cfg, task, u, v, generator = build(
        [
            "experiment=poison_clean_label",
            f"dataset.path={npz}",
            "dataset.features=random_conv",
            "device=cpu",
            "task.num_poisons=2",
            "task.epsilon=0.05",
            "task.retrain.steps=50",
            "solver.lr_u=0.1",  # Adam: about 0.1 per pixel and step, twice the radius
            "solver.T=2",
        ],
        tmp_path,
    )
    problem = task.problem
    low, high = problem.box
    instance = SOLVERS["penalty"](problem, u, v, cfg.solver, generator)
    for _ in range(3):
        instance.step()
        poisons = u["poisons"].detach()
        assert poisons.min() >= low and poisons.max() <= high
        assert (poisons - problem.bases).abs().max() <= 0.05 + 1e-6
    assert (u["poisons"].detach() - problem.bases).abs().max() > 0.04  # it did move to the edge


def test_retraining_ignores_the_attack_model(tmp_path):
    cfg, task, u, v, generator = build(FAKE_LINEAR, tmp_path)
    scrambled = {k: torch.randn_like(t) * 100 for k, t in v.items()}
    first = task.final_metrics(u, v)
    assert task.final_metrics(u, scrambled) == first
    assert {"test_acc", "clean_test_acc", "flip_test_acc"} <= set(first)
    # the retrained model starts from a fresh init, not from the attack's v
    fresh = task.retrained()
    warm = task.problem.classifier.fit(task.clean_inputs, task.clean_labels, task.retrain, v)
    assert not torch.allclose(fresh["W"], warm["W"])


def test_fmd_refuses_the_authors_size_with_the_memory_estimate(tmp_path):
    # 60 poisons of 28 x 28 against a 784 x 10 model: dv/du needs about 4.4 GB
    cfg = compose_config(
        [
            *FAKE_LINEAR,
            "solver=fmd",
            "dataset.side=28",
            "task.num_poisons=60",
            "task.split.train=100",
            "task.pretrain.steps=0",
        ],
        tmp_path,
    )
    with pytest.raises(ConfigError, match=r"max_jacobian_mb.*"):
        runner.run(cfg, tmp_path / "run")


def test_attack_and_dataset_must_match(tmp_path):
    cfg = compose_config(["task=poison", "task.attack=clean_label", "device=cpu"], tmp_path)
    with pytest.raises(ConfigError, match="dataset=dogfish"):
        build_task(cfg, torch.device("cpu"), torch.Generator())


def test_untargeted_split_is_disjoint_and_poisons_have_wrong_labels():
    pools = poison_sets.fake_digit_pools(4, 300, 50, 0.3, seed=1)
    sizes = OmegaConf.create({"train": 100, "val": 50, "test": 80})
    split = poison_sets.untargeted_split(pools, sizes, torch.Generator().manual_seed(0))
    rows = torch.cat([split.x_train, split.x_upper, split.x_test])
    assert len(rows) == 230 and len(torch.unique(rows, dim=0)) == 230
    x, y = poison_sets.label_flip_poisons(
        split.x_train, split.y_train, 20, 10, torch.Generator().manual_seed(0)
    )
    originals = [torch.nonzero((split.x_train == row).all(1)).flatten()[0] for row in x]
    assert (split.y_train[torch.stack(originals)] != y).all()


def test_targeted_split_relabels_the_source_class():
    pools = poison_sets.fake_digit_pools(4, 3000, 600, 0.3, seed=1)
    sizes = OmegaConf.create({"train": 200, "val": 400, "test": 500})
    split = poison_sets.targeted_split(pools, sizes, 8, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(split.y_train, minlength=10).tolist() == [20] * 10
    assert len(split.y_upper) == 40 and (split.y_upper == 3).all()
    assert (split.y_test == 8).sum() == 50  # true labels, balanced
    x, y = poison_sets.swap_poisons(
        split.x_train, split.y_train, 10, 8, 3, torch.Generator().manual_seed(0)
    )
    assert sorted(y.tolist()) == [3] * 5 + [8] * 5


def test_dogfish_reader_round_trip_and_errors(tmp_path):
    path = poison_sets.write_fake_dogfish(tmp_path / "df.npz", side=6, train_per_class=3)
    data = poison_sets.load_dogfish(path)
    assert data.x_train.shape == (6, 3, 6, 6) and data.y_test.dtype == torch.int64
    with pytest.raises(DatasetError, match="no file at"):
        poison_sets.load_dogfish(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", X_train=np.zeros((2, 4, 4, 3)))
    with pytest.raises(DatasetError, match="Y_train"):
        poison_sets.load_dogfish(tmp_path / "bad.npz")


def test_missing_inception_weights_is_a_clear_error(tmp_path, monkeypatch):
    from bilevel_bench.models import inception_features

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DatasetError, match="InceptionV3 ImageNet weights not found"):
        inception_features.inception_v3_features(download=False)


def test_targeted_attack_reports_success_rates(tmp_path):
    cfg, task, u, v, generator = build(
        [*FAKE_LINEAR, "task.attack=targeted", "task.split.val=100", "task.split.test=100"],
        tmp_path,
    )
    problem = task.problem
    assert (problem.y_upper == 3).all() and problem.sign == 1.0
    assert sorted(problem.poison_labels.tolist()) == [3, 3, 3, 8, 8, 8]
    instance = SOLVERS["penalty"](problem, u, v, cfg.solver, generator)
    task.prepare(u, v)
    instance.step()
    assert "val_target_success" in task.evaluate(u, v)
    metrics = task.final_metrics(u, v)
    for prefix in ("", "clean_", "flip_"):
        assert 0 <= metrics[prefix + "target_success"] <= 100
        assert 0 <= metrics[prefix + "test_acc"] <= 100
