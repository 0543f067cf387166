"""The best setting per solver in a grid sweep, chosen on a validation metric (never the test
set): mean over the seeds of each setting, highest wins (lowest with --lowest).
    python scripts/pick_best.py results/denoise_modern/grid/runs.csv --metric val_acc \
        --keys solver.lr_u solver.lr_v
prints one line per solver: the solver, its chosen overrides, and the metric's mean and count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bilevel_bench.report.runs import ReportError, attach_keys, load_runs


def best_settings(runs_csv: Path, metric: str, keys: list[str], lowest: bool = False):
    runs = load_runs([runs_csv])
    runs = runs[runs["status"] == "ok"]
    runs = attach_keys(runs, keys)
    runs[metric] = runs[metric].astype(float)
    means = runs.groupby(["solver", *keys])[metric].agg(["mean", "count"]).reset_index()
    chosen = means.sort_values("mean", ascending=lowest).groupby("solver", sort=True).head(1)
    return chosen.sort_values("solver")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_csv", type=Path)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--keys", nargs="+", required=True)
    parser.add_argument("--lowest", action="store_true")
    args = parser.parse_args(argv)
    try:
        chosen = best_settings(args.runs_csv, args.metric, args.keys, args.lowest)
    except ReportError as err:
        sys.exit(f"pick_best: {err}")
    for _, row in chosen.iterrows():
        overrides = " ".join(f"{k}={row[k]}" for k in args.keys)
        print(f"{row['solver']} {overrides} # {args.metric} {row['mean']:.4g} over {row['count']}")


if __name__ == "__main__":
    main()
