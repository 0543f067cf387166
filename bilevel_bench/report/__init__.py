"""`bilevel-bench-report`: tables, plots and comparisons from the runs.csv files of bilevel-bench.

bilevel-bench-report table results/runs.csv [--metric M] [--by task,dataset] [--out PREFIX]
bilevel-bench-report table results/runs.csv --paper        # beside the paper's numbers
bilevel-bench-report plot results/runs.csv [--metric M] [--x time_s|step] [--out FILE.png]
bilevel-bench-report compare A/runs.csv B/runs.csv [--metric M]
bilevel-bench-report paper RUNS.csv... [--out results/PAPER.md]   # every paper table, ours beside
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bilevel_bench.report import paper, plots, tables
from bilevel_bench.report.runs import ReportError, choose_metric, find_run_dirs, load_runs

DEFAULT_BY = "task,dataset"
REFERENCE = Path("results") / "paper_reference.csv"


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def _default_reference() -> Path:
    """results/paper_reference.csv of the current directory, else the one in this checkout."""
    here = Path.cwd() / REFERENCE
    checkout = Path(__file__).resolve().parents[2] / REFERENCE
    return here if here.is_file() or not checkout.is_file() else checkout


def _summary(runs, metric, by, mix_devices):
    runs, keys = tables.row_keys(runs, by)
    runs, keys = tables.split_batches(runs, metric, keys)
    tables.check_devices(runs, metric, keys, mix_devices)
    return runs, tables.summarise(runs, keys, metric)


def _describe_runs(runs, files, superseded: int = 0) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    text = f"{len(runs)} runs ({counts}) from {len(files)} file(s)"
    if superseded:  # force=true re-runs and retries: each config counted once, its latest row
        text += f"; {superseded} older row(s) of a config run again left out"
    return text


def cmd_table(args) -> None:
    runs = load_runs(args.runs)
    superseded = runs.attrs.get("superseded", 0)
    metric = choose_metric(runs, args.metric, ", ".join(map(str, args.runs)))
    by = _keys(args.by)
    if "solver" in by and not args.paper:
        raise ReportError("--by solver: the solvers are already the table's columns; leave it out")
    reference = None
    if args.paper:
        reference = paper.load_reference(args.reference or _default_reference())
        missing = [k for k in ("task", "dataset") if k not in by]
        if missing:
            raise ReportError(f"--paper matches on task and dataset: keep {missing} in --by")
        by += [k for k in paper.setting_keys(reference) if k not in by and _has_key(runs, k)]
    runs, summary = _summary(runs, metric, by, args.mix_devices)
    described = _describe_runs(runs, args.runs, superseded)
    title = f"{metric}: mean ± std over seeds of the ok runs; {described}"
    if reference is not None:
        frame, unmatched = tables.beside_paper(summary, reference)
        tex_frame = frame.assign(ours=frame["ours"].str.replace("±", r"$\pm$"))
    else:
        frame = tables.wide(summary)
        tex_frame = tables.wide(summary, pm=r"$\pm$")
    text = f"{title}\n\n{tables.markdown(frame)}"
    print(text)
    if reference is not None and not (reference["metric"] == metric).any():
        listed = ", ".join(sorted(set(reference["metric"])))
        print(f"\nthe paper reference has no {metric} numbers (it has: {listed}); use --metric")
    elif reference is not None and len(unmatched):
        print(f"\npaper numbers for {metric} with no matching runs here:")
        print(tables.markdown(unmatched))
    bad = tables.not_ok_runs(runs, summary.keys)
    if len(bad):
        print(f"\nruns not in the statistics ({len(bad)}):")
        print(tables.markdown(bad))
    if args.out:
        paths = tables.save(args.out, summary.stats, text, tables.latex(tex_frame))
        print("\nsaved " + ", ".join(map(str, paths)))


def _has_key(runs, key) -> bool:
    try:
        tables.attach_keys(runs.head(50), [key])
    except ReportError:
        return False
    return True


def cmd_plot(args) -> None:
    runs = find_run_dirs(args.runs)
    out = Path(args.out) if args.out else None
    if out is None:
        out = Path(f"{args.metric or 'curves'}_vs_{args.x}.png")
    if args.ylim is not None and not args.ylim[0] < args.ylim[1]:
        raise ReportError(f"--ylim {args.ylim[0]:g} {args.ylim[1]:g}: LOW must be below HIGH")
    if args.trials and args.ylim is not None:
        raise ReportError("--ylim is for the median plot: --trials panels keep their own y ranges")
    if args.trials:
        paths, metric, notes = plots.plot_trials(runs, args.metric, args.x, out)
    else:
        path, metric, notes = plots.plot(runs, args.metric, args.x, out, args.ylim)
        paths = [path]
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(map(str, paths))} ({metric} vs {args.x})")


def cmd_compare(args) -> None:
    a, b = load_runs([args.a]), load_runs([args.b])
    metric = choose_metric(a, args.metric, str(args.a))
    choose_metric(b, metric, str(args.b))
    a["_side"], b["_side"] = "A", "B"
    both = pd.concat([a, b], ignore_index=True)
    # one set of row keys for both files, so that A and B rows line up
    both, keys = tables.row_keys(both, _keys(args.by), separate=("_side",))
    both, keys = tables.split_batches(both, metric, keys)
    # one check over both sides: B - A of runtimes from two devices is not a speed-up
    tables.check_devices(both, metric, keys, args.mix_devices)
    sides = {s: both[both["_side"] == s] for s in ("A", "B")}
    summary_a, summary_b = (tables.summarise(sides[s], keys, metric) for s in ("A", "B"))
    frame, numbers = tables.against(summary_a, summary_b, (f"A: {args.a}", f"B: {args.b}"))
    text = f"{metric}: mean ± std over seeds of the ok runs (A: {args.a}, B: {args.b})\n\n"
    text += tables.markdown(frame)
    print(text)
    if args.out:
        tex = tables.latex(frame.map(lambda text: str(text).replace("±", r"$\pm$")))
        paths = tables.save(args.out, numbers, text, tex)
        print("\nsaved " + ", ".join(map(str, paths)))


def cmd_paper(args) -> None:
    reference = paper.load_reference(args.reference or _default_reference())
    runs = load_runs(args.runs)
    text = paper.render(reference, runs, [str(path) for path in args.runs])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({len(reference)} paper numbers, {len(runs)} runs read)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bilevel-bench-report",
        description="Tables, plots and comparisons from bilevel-bench runs.csv files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    table = commands.add_parser("table", help="mean ± std over seeds, solvers as columns")
    table.add_argument("runs", nargs="+", help="runs.csv files (or folders holding one)")
    table.add_argument("--metric", help="column to summarise (default: test_acc or upper_error)")
    table.add_argument(
        "--by",
        default=DEFAULT_BY,
        help="row keys: runs.csv columns or run config keys such as task.noise, "
        f"solver.T (default {DEFAULT_BY}; keys that differ inside a cell are "
        "added automatically)",
    )
    table.add_argument("--out", help="save PREFIX.csv, PREFIX.md and PREFIX.tex")
    table.add_argument(
        "--paper",
        action="store_true",
        help="put the paper's published numbers beside ours, with the difference",
    )
    table.add_argument("--reference", type=Path, help=f"paper numbers CSV (default {REFERENCE})")
    table.add_argument(
        "--mix-devices",
        action="store_true",
        help="allow runtime_s / peak_mem_mb from different devices in one column",
    )
    table.set_defaults(func=cmd_table)

    plot = commands.add_parser("plot", help="metric vs wall time, median over seeds with a band")
    plot.add_argument("runs", nargs="+", help="run dirs, sweep dirs or runs.csv files")
    plot.add_argument("--metric", help="curve column (default: upper_error, else test_acc)")
    plot.add_argument("--x", choices=["time_s", "step"], default="time_s")
    plot.add_argument("--out", help="PNG file (default METRIC_vs_X.png)")
    plot.add_argument(
        "--trials",
        action="store_true",
        help="the paper's style: every trial and their mean, a panel per solver and setting, "
        "one PNG per problem (OUT_<dataset>.png)",
    )
    plot.add_argument(
        "--ylim",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="y-axis range, e.g. --ylim 85 92 for accuracies near the top",
    )
    plot.set_defaults(func=cmd_plot)

    compare = commands.add_parser("compare", help="two runs.csv side by side, with differences")
    compare.add_argument("a", help="runs.csv A")
    compare.add_argument("b", help="runs.csv B")
    compare.add_argument("--metric")
    compare.add_argument("--by", default=DEFAULT_BY)
    compare.add_argument("--out", help="save PREFIX.csv, PREFIX.md and PREFIX.tex")
    compare.add_argument("--mix-devices", action="store_true")
    compare.set_defaults(func=cmd_compare)

    page = commands.add_parser(
        "paper", help="every table of the paper in its layout, our results beside its numbers"
    )
    page.add_argument("runs", nargs="+", help="runs.csv files (or folders holding one)")
    page.add_argument("--reference", type=Path, help=f"paper numbers CSV (default {REFERENCE})")
    page.add_argument("--out", default="results/PAPER.md", help="markdown file to write")
    page.set_defaults(func=cmd_paper)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ReportError as err:
        print(f"bilevel-bench-report: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
