"""Markdown table of a poisoning runs.csv: mean +- std over seeds per solver (and num_poisons).

python scripts/summarize_poison.py results/poison/runs.csv
"""

from __future__ import annotations

import sys

import pandas as pd

COLUMNS = ["test_acc", "flip_test_acc", "clean_test_acc", "runtime_s"]


def summarize(runs: pd.DataFrame) -> str:
    ok = runs[runs.status == "ok"]
    ok = ok.assign(drop_vs_flip=ok.flip_test_acc - ok.test_acc)
    stats = ok.groupby("solver")[[*COLUMNS, "drop_vs_flip"]].agg(["mean", "std"])
    table = pd.DataFrame(
        {
            col: [
                f"{m:.2f} ± {s:.2f}" for m, s in stats[col][["mean", "std"]].itertuples(index=False)
            ]
            for col in [*COLUMNS, "drop_vs_flip"]
        },
        index=stats.index,
    )
    table.insert(0, "seeds", ok.groupby("solver").size())
    lines = [table.to_markdown()]
    for _, row in runs[runs.status != "ok"].iterrows():
        lines.append(f"\n{row.solver} seed {row.seed}: {row.status}: {row.error}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else "results/poison/runs.csv")))
