"""bilevel-bench-report: statistics, lost runs, device rule, paper join, plots, compare."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bilevel_bench import cli, results
from bilevel_bench.report import main, plots
from bilevel_bench.report.plots import median_band

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_runs(csv_path: Path, specs: list[dict]) -> Path:
    """Rows through the project's own writer; a spec's `config` entry becomes the run dir's
    .hydra/config.yaml, as Hydra writes it."""
    for i, spec in enumerate(specs):
        spec = dict(spec)
        config = spec.pop("config", None)
        fields = {"task": "synthetic", "dataset": "smd20", "status": "ok", "seed": i, **spec}
        fields.setdefault("group_hash", f"{fields['task']}-{fields['solver']}-{config}")
        fields.setdefault("device", "cpu (x86_64, 2 cores)")
        run_dir = csv_path.parent / "runs" / f"run{i}"
        fields.setdefault("run_dir", str(run_dir))
        if config is not None:
            (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
        results.append_row(csv_path, results.new_row(**fields))
    return csv_path


def report(*args: str, capsys) -> str:
    main([str(a) for a in args])
    return capsys.readouterr().out


def refused(*args: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_table_mean_std_exact_and_lost_runs_counted(tmp_path, capsys):
    csv = write_runs(
        tmp_path / "runs.csv",
        [
            {"solver": "penalty", "upper_error": 1.0},
            {"solver": "penalty", "upper_error": 2.0},
            {"solver": "penalty", "upper_error": 3.0},
            {"solver": "penalty", "status": "failed", "error": "RuntimeError: boom"},
            {"solver": "rmd", "upper_error": 2.0},
            {"solver": "rmd", "upper_error": 4.0},
            {"solver": "rmd", "status": "diverged", "upper_error": 1e9, "error": "non-finite"},
        ],
    )
    out = report("table", csv, "--out", tmp_path / "table", capsys=capsys)
    stats = pd.read_csv(tmp_path / "table.csv").set_index("solver")
    assert stats.loc["penalty", "mean"] == 2.0 and stats.loc["penalty", "std"] == 1.0
    assert stats.loc["rmd", "mean"] == 3.0  # the diverged 1e9 is not averaged in
    assert stats.loc["rmd", "std"] == pytest.approx(2**0.5)
    assert (stats.loc["penalty", "n_failed"], stats.loc["rmd", "n_diverged"]) == (1, 1)
    assert "2 ± 1 (n=3); 1 failed" in out and "3 ± 1.4 (n=2); 1 diverged" in out
    assert "RuntimeError: boom" in out  # the lost runs are listed with their error
    assert "penalty" in (tmp_path / "table.md").read_text()
    assert r"$\pm$" in (tmp_path / "table.tex").read_text()


def test_same_file_twice_counts_each_run_once(tmp_path, capsys):
    csv = write_runs(tmp_path / "runs.csv", [{"solver": "rmd", "upper_error": x} for x in (1, 3)])
    out = report("table", csv, csv, capsys=capsys)
    assert "2 ± 1.4 (n=2)" in out


def test_runtime_from_two_devices_refused_unless_asked(tmp_path, capsys):
    csv = write_runs(
        tmp_path / "runs.csv",
        [
            {"solver": "penalty", "runtime_s": 1.0, "device": "NVIDIA H100"},
            {"solver": "penalty", "runtime_s": 9.0, "device": "cpu (x86_64, 2 cores)"},
        ],
    )
    err = refused("table", csv, "--metric", "runtime_s", capsys=capsys)
    assert "NVIDIA H100" in err and "--mix-devices" in err
    assert "5 ± 5.7 (n=2)" in report(
        "table", csv, "--metric", "runtime_s", "--mix-devices", capsys=capsys
    )
    by_device = report(
        "table", csv, "--metric", "runtime_s", "--by", "task,dataset,device", capsys=capsys
    )
    assert "NVIDIA H100" in by_device and "1 (n=1)" in by_device


def test_clear_errors_for_missing_file_and_unknown_metric(tmp_path, capsys):
    assert "no such runs.csv" in refused("table", tmp_path / "nope.csv", capsys=capsys)
    csv = write_runs(tmp_path / "runs.csv", [{"solver": "rmd", "upper_error": 1.0}])
    err = refused("table", csv, "--metric", "tst_acc", capsys=capsys)
    assert "'tst_acc' is not a column" in err and "upper_error" in err
    assert "task.nois" in refused("table", csv, "--by", "task,task.nois", capsys=capsys)
    err = refused("table", csv, "--by", "dataset,solver", capsys=capsys)
    assert "--by solver: the solvers are already the table's columns" in err


def test_configs_that_differ_inside_a_cell_become_row_keys(tmp_path, capsys):
    def config(T):
        return {"task": {"name": "synthetic"}, "solver": {"name": "penalty", "T": T}, "seed": 0}

    csv = write_runs(
        tmp_path / "runs.csv",
        [
            {"solver": "penalty", "upper_error": 1.0, "config": config(5)},
            {"solver": "penalty", "upper_error": 3.0, "config": config(5)},
            {"solver": "penalty", "upper_error": 10.0, "config": config(10)},
        ],
    )
    stats = report("table", csv, "--out", tmp_path / "t", capsys=capsys)
    assert "solver.T" in stats
    table = pd.read_csv(tmp_path / "t.csv").set_index("solver.T")
    assert table.loc[5, "mean"] == 2.0 and table.loc[10, "mean"] == 10.0


def test_paper_column_joins_on_task_dataset_and_setting(tmp_path, capsys):
    def config(noise, model="mnist_cnn"):
        return {
            "task": {"name": "denoise", "noise": noise, "epochs": 101},  # the paper's budget
            "solver": {"name": "penalty"},
            "model": {"name": model},
        }

    csv = write_runs(
        tmp_path / "runs.csv",
        [
            {
                "task": "denoise",
                "dataset": "mnist",
                "solver": "penalty",
                "test_acc": 98.0,
                "config": config(0.25),
            },
            {
                "task": "denoise",
                "dataset": "mnist",
                "solver": "penalty",
                "test_acc": 99.0,
                "config": config(0.25),
            },
            {
                "task": "denoise",
                "dataset": "mnist",
                "solver": "penalty",
                "test_acc": 90.0,
                "config": config(0.5),
            },
            {  # the small-scale logreg setting is not the paper's CNN row: no reference beside it
                "task": "denoise",
                "dataset": "mnist",
                "solver": "penalty",
                "test_acc": 80.0,
                "config": config(0.5, "logreg"),
            },
        ],
    )
    os.chdir(tmp_path)  # no results/ here: the checkout's results/paper_reference.csv is used
    out = report("table", csv, "--paper", "--out", tmp_path / "paper", capsys=capsys)
    lines = out.splitlines()
    header = [cell.strip() for cell in next(x for x in lines if "| task" in x).split("|")]
    model, noise = header.index("model.name"), header.index("task.noise")
    rows = {
        (cells[model].strip(), cells[noise].strip()): line
        for line in lines
        if "| denoise" in line and len(cells := line.split("|")) == len(header)
    }
    assert "98.89" in rows["mnist_cnn", "0.25"] and "-0.39" in rows["mnist_cnn", "0.25"]
    assert "97.51" in rows["mnist_cnn", "0.5"] and "-7.51" in rows["mnist_cnn", "0.5"]
    assert "Table 2, MNIST (25%), Penalty" in rows["mnist_cnn", "0.25"]
    assert "97.51" not in rows["logreg", "0.5"]
    assert "cifar10" in out  # reference numbers without runs are listed, not dropped


def test_compare_differences(tmp_path, capsys):
    def config(T):
        return {"solver": {"name": "rmd", "T": T}}

    a = write_runs(
        tmp_path / "a" / "runs.csv",
        [{"solver": "rmd", "upper_error": x, "config": config(5)} for x in (1, 3)],
    )
    b = write_runs(
        tmp_path / "b" / "runs.csv",
        [
            {"solver": "rmd", "upper_error": 5.0, "config": config(10)},
            {"solver": "penalty", "upper_error": 1.0},
        ],
    )
    out = report("compare", a, b, "--out", tmp_path / "ab", capsys=capsys)
    rmd = next(line for line in out.splitlines() if "| rmd" in line)  # T=5 vs T=10: one row
    assert rmd.rstrip(" |").endswith("3")  # 5 - mean(1, 3)
    penalty = next(line for line in out.splitlines() if "| penalty" in line)
    assert "absent" in penalty
    numbers = pd.read_csv(tmp_path / "ab.csv").set_index("solver")
    assert numbers.loc["rmd", "difference"] == 3.0


def test_median_band_is_exact_on_aligned_curves():
    curves = [pd.DataFrame({"step": [0, 10], "test_acc": [v, v + 10]}) for v in (10, 20, 60)]
    grid, median, q25, q75, n = median_band(curves, "step", "test_acc")
    assert n == 3 and grid[0] == 0 and grid[-1] == 10
    assert median[0] == 20 and median[-1] == 30 and q25[0] == 15 and q75[0] == 40


def test_plot_data_task_defaults_to_test_accuracy(tmp_path, capsys):
    for seed in range(3):
        run_dir = tmp_path / "sweep" / f"{seed}_denoise_penalty"
        run_dir.mkdir(parents=True)
        row = results.new_row(
            task="denoise",
            dataset="mnist",
            solver="penalty",
            seed=seed,
            status="ok",
            group_hash="g",
            run_dir=str(run_dir),
        )
        (run_dir / "result.json").write_text(json.dumps(row))
        pd.DataFrame(
            {"step": [0, 5, 10], "time_s": [0.0, 1.0, 2.0 + seed], "test_acc": [10.0, 50.0, 90.0]}
        ).to_csv(run_dir / "curve.csv", index=False)
    out = report("plot", tmp_path / "sweep", "--out", tmp_path / "acc.png", capsys=capsys)
    assert "test_acc vs time_s" in out
    assert (tmp_path / "acc.png").read_bytes()[:8] == PNG_MAGIC
    err = refused("plot", tmp_path / "sweep", "--metric", "upper_eror", capsys=capsys)
    assert "test_acc" in err


def test_plot_ylim_sets_the_axis_or_is_refused(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    run_dir = tmp_path / "sweep" / "0_denoise_penalty"
    run_dir.mkdir(parents=True)
    row = results.new_row(
        task="denoise", dataset="mnist", solver="penalty", seed=0, status="ok", group_hash="g",
        run_dir=str(run_dir),
    )  # fmt: skip
    (run_dir / "result.json").write_text(json.dumps(row))
    pd.DataFrame({"step": [0, 10], "time_s": [0.0, 1.0], "test_acc": [10.0, 90.0]}).to_csv(
        run_dir / "curve.csv", index=False
    )
    drawn = []
    monkeypatch.setattr(
        Figure, "savefig", lambda fig, *a, **k: drawn.append(fig.axes[0].get_ylim())
    )
    report("plot", tmp_path / "sweep", "--ylim", "85", "92", "--out", tmp_path / "a.png",
           capsys=capsys)  # fmt: skip
    assert drawn == [(85.0, 92.0)]
    err = refused("plot", tmp_path / "sweep", "--ylim", "92", "85", capsys=capsys)
    assert "--ylim 92 85: LOW must be below HIGH" in err
    err = refused("plot", tmp_path / "sweep", "--ylim", "0", "1", "--trials", capsys=capsys)
    assert "--trials" in err


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Four real runs through the CLI (in this process, as Hydra's basic launcher runs a sweep):
    penalty and rmd, two seeds, on the synthetic task."""
    root = tmp_path_factory.mktemp("cli")
    argv = [
        "bilevel-bench",
        "-m",
        "solver=penalty,rmd",
        "seed=0,1",
        "task.iters=30",
        "progress=false",
        f"results_dir={root}",
        f"hydra.sweep.dir={root / 'multirun'}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        cli.main()
    return root


@pytest.mark.slow
def test_table_and_plot_on_real_runs(real_runs, tmp_path, capsys):
    out = report("table", real_runs / "runs.csv", capsys=capsys)
    assert "upper_error" in out and out.count("(n=2)") == 2
    out = report("plot", real_runs / "runs.csv", "--out", tmp_path / "err.png", capsys=capsys)
    assert "upper_error vs time_s" in out
    assert (tmp_path / "err.png").read_bytes()[:8] == PNG_MAGIC
    report(
        "plot", real_runs / "multirun", "--x", "step", "--out", tmp_path / "s.png", capsys=capsys
    )
    assert (tmp_path / "s.png").stat().st_size > 0


def test_runtimes_of_batches_of_different_sizes_are_not_averaged(tmp_path, capsys):
    csv = write_runs(
        tmp_path / "runs.csv",
        [
            {"solver": "penalty", "runtime_s": 10.0, "runs": 4, "upper_error": 1.0},
            {"solver": "penalty", "runtime_s": 10.0, "runs": 4, "upper_error": 2.0},
            {"solver": "penalty", "runtime_s": 3.0, "runs": 1, "upper_error": 3.0},
        ],
    )
    out = report("table", csv, "--metric", "runtime_s", capsys=capsys)
    assert "10 ± 0 (n=2)" in out and "3 (n=1)" in out  # one row per batch size
    pooled = report("table", csv, "--metric", "upper_error", capsys=capsys)
    assert "2 ± 1 (n=3)" in pooled  # what the runs computed does not depend on the batch


@pytest.mark.slow
def test_trials_plot_draws_a_panel_per_solver_and_setting(real_runs, tmp_path, capsys):
    """The paper's figure style: one PNG per problem, every trial and their mean."""
    out = report(
        "plot", real_runs / "runs.csv", "--x", "step", "--trials", "--out", tmp_path / "c.png",
        capsys=capsys,
    )  # fmt: skip
    assert "c_smd20.png" in out
    assert (tmp_path / "c_smd20.png").read_bytes()[:8] == PNG_MAGIC


def test_trial_grid_rows_are_the_settings_every_solver_has():
    """ApproxGrad's T2 is its own: it labels its panels and does not add half-empty rows."""
    runs = pd.DataFrame(
        {
            "solver": ["penalty", "penalty", "approxgrad", "approxgrad"],
            "solver.T": ["5", "10", "5", "10"],
            "solver.T2": ["-", "-", "5", "10"],
        }
    )
    solvers, setting_keys, own_keys, settings = plots.trial_grid(
        runs, ["solver.T", "solver.T2"], []
    )
    assert solvers == ["penalty", "approxgrad"]
    assert (setting_keys, own_keys) == (["solver.T"], ["solver.T2"])
    assert settings == [("5",), ("10",)]  # numbers sorted as numbers
