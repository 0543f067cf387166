"""`bilevel-bench-report paper`: every paper table in its layout, ours beside each number, and a
reason wherever a number has no run of ours; rows are matched on config keys even when their
run folders are gone (configs.jsonl beside runs.csv)."""

from __future__ import annotations

from pathlib import Path

from solver_harness import REPO

from bilevel_bench import results
from bilevel_bench.report import main, paper
from bilevel_bench.report.runs import load_runs

REFERENCE = REPO / "results" / "paper_reference.csv"
D11 = {
    "model.name": "logreg", "dataset.train_size": 5000, "dataset.val_size": 5000,
    "task.noise": 0.5, "task.epochs": 100, "solver.T": 20,
}  # fmt: skip


def d11_rows(results_dir: Path, solver: str, metric: str, values, baseline=None):
    """Rows of the App. D.1.1 setting, their configs recorded in configs.jsonl only."""
    configs = {}
    for seed, value in enumerate(values):
        config_hash = f"{solver}{baseline}{seed}"
        row = results.new_row(
            task="denoise", dataset="mnist", solver=solver, baseline=baseline, seed=seed,
            status="ok", config_hash=config_hash, run_dir=f"/elsewhere/{config_hash}",
            **{metric: value},
        )  # fmt: skip
        results.append_row(results_dir / "runs.csv", row)
        configs[config_hash] = {**D11, "seed": seed}
    results.append_configs(results_dir / results.CONFIGS, configs)


def test_the_reference_holds_every_published_table():
    reference = paper.load_reference(REFERENCE)
    counts = reference.groupby("table").size()
    assert counts["Table 2"] == 30 and counts["Table 3"] == 47 and counts["Table 4"] == 48
    assert counts["Table 5"] == 46 and counts["Table 6"] == 9 and counts["App. D.1.1"] == 5
    cited = reference[reference["kind"] == "cited"]
    assert {"maml", "imaml", "protonet", "relnet", "snail", "ren_et_al", "shu_et_al"} <= set(
        cited["solver"]
    )
    assert set(reference.loc[reference["kind"] == "ours", "solver"]) <= {
        "penalty", "approxgrad", "rmd", "erm", "alternating",
    }  # fmt: skip


def test_the_page_puts_ours_beside_the_papers_numbers(tmp_path):
    d11_rows(tmp_path, "penalty", "retrain_test_acc", [90.7, 90.9, 91.1])
    d11_rows(tmp_path, "erm", "test_acc", [90.0, 90.2], baseline="val_only")
    out = tmp_path / "PAPER.md"
    main(["paper", str(tmp_path / "runs.csv"), "--reference", str(REFERENCE), "--out", str(out)])
    page = out.read_text()
    d11 = next(line for line in page.splitlines() if line.startswith("| MNIST 5000/5000"))
    cells = [cell.strip() for cell in d11.split("|")[2:-1]]
    assert cells[0] == "90.77 · **ours 90.9 ± 0.2 (n=3)**, +0.13 ✓"  # within ours: no paper s.d.
    assert cells[2] == "90.54 · **ours 90.1 ± 0.14 (n=2)**, -0.44 ✗"
    assert "no run at this setting yet" in cells[1]  # RMD: no rows of ours
    assert "CIFAR-10 cannot be fetched in this environment" in page
    assert "98.7 · *cited, not reimplemented*" in page  # MAML, Table 3
    for table in ("Table 2", "Table 3", "Table 4", "Table 5", "Table 6", "App. D.1.1"):
        assert f"## {table}" in page


def test_rows_of_another_setting_are_not_put_beside_a_paper_number(tmp_path):
    d11_rows(tmp_path, "penalty", "retrain_test_acc", [50.0])
    recorded = results.read_configs(tmp_path / results.CONFIGS)
    (config,) = recorded.values()
    config["task.noise"] = 0.25  # not the paper's 50% noise
    (tmp_path / results.CONFIGS).unlink()
    results.append_configs(tmp_path / results.CONFIGS, recorded)
    reference = paper.load_reference(REFERENCE)
    penalty = reference[(reference["table"] == "App. D.1.1") & (reference["solver"] == "penalty")]
    runs = load_runs([tmp_path / "runs.csv"])
    assert len(runs) == 1 and paper.ours_for(runs, penalty.iloc[0]) is None
