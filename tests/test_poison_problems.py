"""Poisoning problems: constraints at every step, fresh retraining, data splits, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import test_runs_axis as runs_axis
import torch
from omegaconf import OmegaConf
from poison_helpers import FAKE_LINEAR, compose_config, one_thread
from solver_harness import make_solver
from test_no_sync import host_reads_raise

from bilevel_bench import runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.data import poison_sets
from bilevel_bench.data.errors import DatasetError
from bilevel_bench.solvers import SOLVERS
from bilevel_bench.tasks import build_task

SEEDS = (0, 1)  # two runs in one batch: every check below holds for each run


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def fake_dogfish(tmp_path, *extra):
    npz = poison_sets.write_fake_dogfish(tmp_path / "df.npz", side=12, train_per_class=12)
    return [
        "experiment=poison_clean_label",
        f"dataset.path={npz}",
        "dataset.features=random_conv",
        "device=cpu",
        "task.num_poisons=2",
        "task.retrain.steps=50",
        *extra,
    ]


def build(overrides, tmp_path, seeds=SEEDS):
    cfg = compose_config(overrides, tmp_path)
    return cfg, build_task(cfg, torch.device("cpu"), list(seeds))


def start(cfg, task, prepare=False):
    """The configured solver and its state for the task's runs (optionally pre-trained)."""
    params = OmegaConf.to_container(cfg.solver, resolve=True)
    solver, state = make_solver(task.problem, params.pop("name"), task.seeds, **params)
    if prepare:
        u, v = task.prepare(state["u"], state["v"])
        state = {**state, "u": u, "v": v}
    return solver, state


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_poisons_stay_in_the_box_at_every_step(solver, tmp_path):
    # a huge upper step would throw pixels far outside [0, 1] without the projection
    cfg, task = build(
        [*FAKE_LINEAR, f"solver={solver}", "solver.lr_u=50.0", "solver.optimizer_u=sgd"], tmp_path
    )
    instance, state = start(cfg, task)
    first = state["u"]["poisons"].clone()
    assert first.shape == (len(SEEDS), 6, 64)
    for _ in range(3):
        state, _ = instance.step(state)
        poisons = state["u"]["poisons"]
        assert poisons.min() >= 0.0 and poisons.max() <= 1.0
    # alternating: its grad_u f is zero on this problem (f does not depend on the poisons)
    if SOLVERS[solver].updates_upper and solver != "alternating":
        for run in range(len(SEEDS)):
            assert not torch.equal(state["u"]["poisons"][run], first[run]), run


def test_clean_label_poison_stays_in_box_and_ball(tmp_path):
    cfg, task = build(
        fake_dogfish(
            tmp_path,
            "task.epsilon=0.05",
            "solver.lr_u=0.1",  # Adam: about 0.1 per pixel and step, twice the radius
            "solver.T=2",
        ),
        tmp_path,
    )
    problem = task.problem
    low, high = problem.box
    assert problem.bases.shape == (len(SEEDS), 2, 3, 12, 12)
    instance, state = start(cfg, task)
    for _ in range(3):
        state, _ = instance.step(state)
        poisons = state["u"]["poisons"]
        assert poisons.min() >= low and poisons.max() <= high
        # each run's poisons stay around that run's own bases
        assert (poisons - problem.bases).abs().max() <= 0.05 + 1e-6
    moved = (state["u"]["poisons"] - problem.bases).abs().flatten(1).amax(1)
    assert (moved > 0.04).all()  # every run did move to the edge


def test_a_seed_draws_the_same_sets_alone_or_in_a_batch(tmp_path):
    _, batch = build(FAKE_LINEAR, tmp_path, seeds=(0, 1, 2))
    _, alone = build(FAKE_LINEAR, tmp_path, seeds=(1,))
    sets = {
        "train": lambda task: task.problem.train,
        "upper": lambda task: task.problem.upper,
        "poisons": lambda task: task.problem.initial_poisons,
        "flips": lambda task: task.flips,
        "test": lambda task: task.test,
    }
    for name, of in sets.items():
        assert torch.equal(of(batch).index[1], of(alone).index[0]), name
        assert torch.equal(of(batch).labels[1], of(alone).labels[0]), name
        assert not torch.equal(of(batch).index[0], of(batch).index[1]), name  # seeds differ
    assert batch.test.pool is batch.problem.train.pool  # one copy of the images for all runs


def test_a_seed_picks_the_same_clean_label_targets_alone_or_in_a_batch(tmp_path):
    _, batch = build(fake_dogfish(tmp_path, "task.num_poisons=1"), tmp_path, seeds=(0, 1, 2))
    _, alone = build(fake_dogfish(tmp_path, "task.num_poisons=1"), tmp_path, seeds=(2,))
    assert torch.equal(batch.problem.targets.index[2], alone.problem.targets.index[0])
    assert torch.equal(batch.problem.bases[2], alone.problem.bases[0])
    assert torch.equal(batch.flips.index[2], alone.flips.index[0])
    assert len(set(batch.problem.targets.index.flatten().tolist())) > 1  # seeds pick their own


def test_retraining_ignores_the_attack_model(tmp_path):
    cfg, task = build(FAKE_LINEAR, tmp_path)
    _, state = start(cfg, task)
    u, v = state["u"], state["v"]
    dirs = [tmp_path / f"seed{seed}" for seed in SEEDS]
    for directory in dirs:
        directory.mkdir()
    scrambled = {k: torch.randn_like(t) * 100 for k, t in v.items()}
    first = task.final_metrics(u, v, [0, 1], dirs)
    assert task.final_metrics(u, scrambled, [0, 1], dirs) == first
    assert set(first) == {0, 1}
    assert {"test_acc", "clean_test_acc", "flip_test_acc"} <= set(first[0])
    # the retrained model starts from a fresh init, not from the attack's v
    clean = task.problem.clean_set(slice(0, 1))
    fresh = task.retrained([clean], 0)
    warm = task.problem.classifier.fit({k: t[:1] for k, t in v.items()}, task.retrain, [clean])
    assert not torch.allclose(fresh["W"], warm["W"])


def test_final_metrics_write_each_runs_poisons_into_its_directory(tmp_path):
    cfg, task = build(FAKE_LINEAR, tmp_path)
    _, state = start(cfg, task)
    dirs = [tmp_path / f"seed{seed}" for seed in SEEDS]
    for directory in dirs:
        directory.mkdir()
    task.final_metrics(state["u"], state["v"], [1], dirs)  # run 0 diverged, say: not written
    assert not any(dirs[0].iterdir())
    assert torch.equal(torch.load(dirs[1] / "poisons.pt"), state["u"]["poisons"][1])
    assert (dirs[1] / "poisons.png").stat().st_size > 0

    _, quiet = build([*FAKE_LINEAR, "task.save_images=false"], tmp_path)
    quiet.final_metrics(state["u"], state["v"], [0, 1], dirs)
    assert not any(dirs[0].iterdir())


def test_fmd_refuses_the_authors_size_with_the_memory_estimate(tmp_path):
    # 60 poisons of 28 x 28 against a 784 x 10 model: dv/du needs gigabytes per run
    cfg = compose_config(
        [
            *FAKE_LINEAR,
            "solver=fmd",
            "dataset.side=28",
            "task.num_poisons=60",
            "task.split.train=100",
            "task.pretrain.steps=0",
            "runs=2",
        ],
        tmp_path,
    )
    expected = r"fmd needs about [\d,]+ MB for dv/du \(2 run\(s\) x 47,040 upper x 7,840 lower"
    with pytest.raises(ConfigError, match=expected + r".*max_jacobian_mb"):
        runner.run(cfg, tmp_path / "run")


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("experiment", ["untargeted", "targeted", "clean_label"])
def test_every_poisoning_experiment_accepts_every_solver(experiment, solver, tmp_path):
    # an experiment's penalty-only settings (lam0, ...) must not reach the other solvers
    cfg = compose_config([f"experiment=poison_{experiment}", f"solver={solver}"], tmp_path)
    runner.validate(cfg)


def test_attack_and_dataset_must_match(tmp_path):
    cfg = compose_config(["task=poison", "task.attack=clean_label", "device=cpu"], tmp_path)
    with pytest.raises(ConfigError, match="dataset=dogfish"):
        build_task(cfg, torch.device("cpu"), [0])


def test_untargeted_split_is_disjoint_and_poisons_have_wrong_labels():
    pools = poison_sets.fake_digit_pools(4, 300, 50, 0.3, seed=1)
    sizes = OmegaConf.create({"train": 100, "val": 50, "test": 80})
    split = poison_sets.untargeted_split(pools, sizes, torch.Generator().manual_seed(0))
    rows = torch.cat([split.train, split.upper, split.test])
    assert len(rows) == 230 and len(torch.unique(rows)) == 230
    assert rows.max() < pools.train_size  # the authors' split uses the train pool only
    assert torch.equal(split.upper_labels, pools.labels[split.upper])  # true labels
    y_train = pools.labels[split.train]
    positions, labels = poison_sets.label_flip_poisons(
        y_train, 20, 10, torch.Generator().manual_seed(0)
    )
    assert len(torch.unique(positions)) == 20
    assert (y_train[positions] != labels).all()


def test_targeted_split_relabels_the_source_class():
    pools = poison_sets.fake_digit_pools(4, 3000, 600, 0.3, seed=1)
    sizes = OmegaConf.create({"train": 200, "val": 400, "test": 500})
    split = poison_sets.targeted_split(pools, sizes, 8, 3, torch.Generator().manual_seed(0))
    y_train = pools.labels[split.train]
    assert torch.bincount(y_train, minlength=10).tolist() == [20] * 10
    assert len(split.upper) == 40 and (split.upper_labels == 3).all()
    assert (pools.labels[split.upper] == 8).all()  # the source images, relabelled
    assert (split.upper >= 400).all() and (split.upper < pools.train_size).all()
    assert (split.test >= pools.train_size).all()  # from the test pool
    assert (pools.labels[split.test] == 8).sum() == 50  # true labels, balanced
    positions, labels = poison_sets.swap_poisons(
        y_train, 10, 8, 3, torch.Generator().manual_seed(0)
    )
    assert sorted(labels.tolist()) == [3] * 5 + [8] * 5
    assert (y_train[positions] != labels).all()  # 3s labelled 8 and 8s labelled 3


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
    cfg, task = build(
        [*FAKE_LINEAR, "task.attack=targeted", "task.split.val=100", "task.split.test=100"],
        tmp_path,
    )
    problem = task.problem
    assert (problem.upper.labels == 3).all() and problem.sign == 1.0
    for run in range(len(SEEDS)):
        assert sorted(problem.poison_labels[run].tolist()) == [3, 3, 3, 8, 8, 8]
    instance, state = start(cfg, task, prepare=True)
    state, _ = instance.step(state)
    evaluated = task.evaluate(state["u"], state["v"])
    assert len(evaluated) == len(SEEDS)
    assert all(0 <= point["val_target_success"] <= 100 for point in evaluated)
    dirs = [tmp_path / f"seed{seed}" for seed in SEEDS]
    for directory in dirs:
        directory.mkdir()
    metrics = task.final_metrics(state["u"], state["v"], [0, 1], dirs)
    for run in range(len(SEEDS)):
        for prefix in ("", "clean_", "flip_"):
            assert 0 <= metrics[run][prefix + "target_success"] <= 100
            assert 0 <= metrics[run][prefix + "test_acc"] <= 100


def other_attacks(tmp_path):
    """The attacks test_runs_axis does not cover (it runs the untargeted one)."""
    return {
        "targeted": [*FAKE_LINEAR, "task.attack=targeted", "task.split.val=100"],
        "clean_label": fake_dogfish(tmp_path, "task.iters=2", "solver.T=2", "task.epsilon=0.05"),
    }


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("attack", ["targeted", "clean_label"])
def test_a_step_of_the_other_attacks_never_reads_a_value_on_the_host(
    attack, solver, tmp_path, monkeypatch
):
    cfg, task = build([*other_attacks(tmp_path)[attack], f"solver={solver}"], tmp_path)
    instance, state = start(cfg, task)
    with host_reads_raise(monkeypatch):
        for _ in range(2):
            state, _ = instance.step(state)
    assert state["stream"]["step"].tolist() == [2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["approxgrad", "fmd", "penalty", "rmd"])
@pytest.mark.parametrize("attack", ["targeted", "clean_label"])
def test_run_k_of_a_batch_of_the_other_attacks_equals_its_single_run(attack, solver, tmp_path):
    overrides = [*other_attacks(tmp_path)[attack], f"solver={solver}", "task.save_images=false"]
    seeds = [3, 4, 5]
    batch = runs_axis.execute(overrides, seeds, tmp_path)
    for k, seed in enumerate(seeds):
        single = runs_axis.execute(overrides, [seed], tmp_path)
        for side in ("u", "v"):
            for name, tensor in single.state[side].items():
                runs_axis.assert_close(batch.state[side][name][k], tensor[0], f"{seed} {name}")
        expected, got = single.metrics(0), batch.metrics(k)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=runs_axis.RELATIVE, nan_ok=True), key
