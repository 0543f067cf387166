"""Markdown table of a poisoning runs.csv: mean +- std over seeds per solver and batch size.

python scripts/summarize_poison.py results/poison/runs.csv

Rows do not record task settings (attack, num_poisons): give it the runs.csv of one setting.
`runs` is how many seeds were computed together (a command with runs=K writes K rows) and
runtime_s is the whole batch's time, so batches of different sizes are kept apart; rows written
before the `runs` column existed were single runs.
"""

from __future__ import annotations

import sys

import pandas as pd

COLUMNS = ["test_acc", "flip_test_acc", "clean_test_acc", "runtime_s"]
GROUP = ["solver", "runs"]


def with_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows with a `runs` column, 1 where it is missing (rows of single runs)."""
    sizes = runs["runs"] if "runs" in runs else pd.Series(1, index=runs.index)
    return runs.assign(runs=sizes.fillna(1).astype(int))


def summarize(runs: pd.DataFrame) -> str:
    runs = with_runs(runs)
    ok = runs[runs.status == "ok"]
    ok = ok.assign(drop_vs_flip=ok.flip_test_acc - ok.test_acc)
    columns = [*COLUMNS, "drop_vs_flip"]
    stats = ok.groupby(GROUP)[columns].agg(["mean", "std"])
    table = pd.DataFrame(
        {
            col: [f"{m:.2f} ± {s:.2f}" for m, s in stats[col][["mean", "std"]].to_numpy()]
            for col in columns
        },
        index=stats.index,
    )
    table.insert(0, "seeds", ok.groupby(GROUP).size())
    lines = [table.reset_index().to_markdown(index=False)]
    for _, row in runs[runs.status != "ok"].iterrows():
        lines.append(f"\n{row.solver} seed {row.seed} (runs={row.runs}): {row.status}: {row.error}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else "results/poison/runs.csv")))
