"""End to end through the runner (Hydra-composed configs): every solver on fake_fewshot, the
meta-test of a run in a batch, FMD's refusal at the authors' sizes, and a short real Omniglot run
when the data is here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from fewshot_helpers import TINY, compose_config

from bilevel_bench import runner
from bilevel_bench.checks import ConfigError
from bilevel_bench.tasks import build_task

OMNIGLOT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# bome, vpbgd and soba refuse fresh heads per meta-batch: tests/test_modern_solvers.py
@pytest.mark.parametrize(
    "solver",
    ["penalty", "approxgrad", "rmd", "alternating", "f2sa", "stocbio", "amigo", "aid_cg"],
)
def test_every_solver_runs_fewshot_end_to_end(tmp_path, solver):
    implicit = ("approxgrad", "stocbio", "amigo", "aid_cg")
    extra = ["solver.T2=2"] if solver in implicit else []
    cfg = compose_config(*TINY, f"solver={solver}", f"results_dir={tmp_path}", *extra)
    (row,) = runner.run(cfg, tmp_path / "run")
    assert row["status"] == "ok" and row["dataset"] == "fake_fewshot"
    assert 0 <= row["test_acc"] <= 100 and row["test_acc_ci95"] > 0
    curve = pd.read_csv(tmp_path / "run" / "curve.csv")
    assert curve["step"].tolist() == [0, 2, 3]
    assert {"test_acc", "test_acc_ci95", "test_loss"} <= set(curve.columns)
    assert pd.read_csv(tmp_path / "runs.csv")["test_acc_ci95"].notna().all()


def _meta_test(seeds, *overrides):
    """The meta-test metrics of freshly initialised runs of `seeds`."""
    cfg = compose_config(*TINY, *overrides)
    task = build_task(cfg, torch.device("cpu"), seeds)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return task.evaluate(*task.problem.init_variables(generators))


def test_meta_test_of_a_run_is_the_same_alone_or_in_a_batch():
    batch = _meta_test([3, 4])
    assert batch == _meta_test([3, 4])  # the same held-out episodes at every evaluation
    assert batch[0] != batch[1]  # each seed its own episodes and encoder
    for run, seed in enumerate((3, 4)):
        (alone,) = _meta_test([seed])
        assert alone.keys() == {"test_acc", "test_acc_ci95", "test_loss"}
        assert alone == pytest.approx(batch[run], rel=1e-5)


def test_fmd_refuses_the_omniglot_preset_with_its_memory_estimate(tmp_path):
    cfg = compose_config(
        "experiment=fewshot_omniglot_5w1s",
        "dataset=fake_fewshot",
        "solver=fmd",
        "device=cpu",
        f"results_dir={tmp_path}",
    )
    with pytest.raises(ConfigError, match=r"fmd needs about [\d,]+ MB .*max_jacobian_mb"):
        runner.run(cfg, tmp_path / "run")


def test_presets_pin_the_authors_settings():
    cfg = compose_config("experiment=fewshot_omniglot_20w5s")
    assert (cfg.task.ways, cfg.task.shots, cfg.task.meta_batch, cfg.task.iters) == (
        20,
        5,
        15,
        10000,
    )
    assert cfg.solver.T == 20 and cfg.dataset.name == "omniglot" and cfg.model.name == "conv4"
    cfg = compose_config("experiment=fewshot_miniimagenet_5w1s", "solver=approxgrad")
    assert cfg.model.name == "resnet_mini" and cfg.task.meta_batch == 2
    assert cfg.solver.lr_u == cfg.solver.lr_v == 0.001 and cfg.solver.T2 == 20


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(
    not (OMNIGLOT_ROOT / "omniglot-py").is_dir(), reason="../shared/data/omniglot-py absent"
)
def test_short_real_omniglot_run_is_well_above_chance(tmp_path):
    # The first run decodes the PNGs into the user cache (minutes); later runs load it.
    cfg = compose_config(
        "experiment=fewshot_omniglot_5w1s",
        "device=cpu",
        f"data.root={OMNIGLOT_ROOT}",
        "task.iters=3",
        "task.eval_every=3",
        "task.meta_batch=2",
        "task.queries=3",
        "task.eval_episodes=10",
        "task.eval_queries=5",
        "progress=false",
        f"results_dir={tmp_path}",
    )
    (row,) = runner.run(cfg, tmp_path / "run")
    assert row["status"] == "ok" and row["dataset"] == "omniglot"
    assert row["test_acc"] > 40  # chance is 20% for 5-way
