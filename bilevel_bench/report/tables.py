"""Mean +- std over seeds per (row keys, solver), as markdown / CSV / TeX; paper and A/B joins."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bilevel_bench.report.runs import ReportError, attach_keys, distinguishing_keys

SOLVER_ORDER = ["penalty", "approxgrad", "rmd", "fmd", "alternating"]
# Costs measured on a machine: numbers from different devices do not belong in one column.
DEVICE_DEPENDENT = {"runtime_s", "peak_mem_mb"}
BAD_STATUSES = ["failed", "diverged"]


@dataclass
class Summary:
    """Statistics per (keys..., solver) in tidy form, plus the keys that index the rows."""

    stats: pd.DataFrame
    keys: list[str]
    metric: str


def row_keys(
    runs: pd.DataFrame, by: list[str], separate: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, list[str]]:
    """`by` plus the config keys needed so that one cell never mixes different configs.

    `separate`: columns whose values are compared against each other rather than mixed (the
    two sides of `compare`), so a key that only differs between them is not a row key.
    """
    if "baseline" in runs and runs["baseline"].notna().any() and "baseline" not in by:
        by = [*by, "baseline"]  # the paper's baselines are all solver=erm: keep them apart
    runs = attach_keys(runs, by)
    extra = distinguishing_keys(runs, by + ["solver", *separate])
    runs = attach_keys(runs, extra)
    keys = by + extra
    for key in keys:
        runs[key] = runs[key].map(_label)
    return runs, keys


MISSING = "-"  # the label of a config key a run does not have (e.g. T2 for a solver without it)


def _label(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return str(value)


def split_batches(
    runs: pd.DataFrame, metric: str, keys: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """A cost measured on batches of different sizes (runs=K: runtime_s and peak_mem_mb are the
    whole batch's) is shown per batch size: `runs` becomes a row key. Rows from before the
    column existed were single runs."""
    if metric not in DEVICE_DEPENDENT or "runs" in keys:
        return runs, keys
    runs = runs.copy()
    sizes = pd.to_numeric(runs["runs"], errors="coerce") if "runs" in runs else None
    runs["runs"] = (sizes.fillna(1) if sizes is not None else 1).astype(int).astype(str)
    if runs.loc[runs["status"] == "ok", "runs"].nunique() > 1:
        return runs, [*keys, "runs"]
    return runs, keys


def check_devices(runs: pd.DataFrame, metric: str, keys: list[str], mix: bool) -> None:
    if metric not in DEVICE_DEPENDENT or mix or "device" in keys or "device" not in runs:
        return
    counts = runs.loc[runs["status"] == "ok", "device"].fillna("unknown").value_counts()
    if len(counts) > 1:
        listed = "; ".join(f"{name} ({n} runs)" for name, n in counts.items())
        raise ReportError(
            f"{metric} was measured on {len(counts)} different devices: {listed}. Times from "
            "different machines are not comparable in one column: add the device to the rows "
            "(--by task,dataset,device), report one device's runs.csv, or pass --mix-devices"
        )


def summarise(runs: pd.DataFrame, keys: list[str], metric: str) -> Summary:
    """Mean and sample std over the ok runs of each cell; failed / diverged runs are counted."""
    runs = runs.assign(_value=pd.to_numeric(runs[metric], errors="coerce"))
    rows = []
    for cell, group in runs.groupby(keys + ["solver"], sort=False, dropna=False):
        ok_rows = group.loc[group["status"] == "ok", "_value"]
        ok = ok_rows.dropna()
        row = dict(zip(keys + ["solver"], cell, strict=True))
        row.update(
            mean=ok.mean() if len(ok) else math.nan,
            std=ok.std(ddof=1) if len(ok) > 1 else math.nan,
            n_ok=len(ok),
            n_runs=len(group),
            n_no_value=len(ok_rows) - len(ok),
        )
        for status in BAD_STATUSES:
            row[f"n_{status}"] = int((group["status"] == status).sum())
        row["n_other"] = row["n_runs"] - len(ok_rows) - row["n_failed"] - row["n_diverged"]
        rows.append(row)
    stats = pd.DataFrame(rows)
    stats = stats.sort_values(keys + ["solver"], key=_sort_key, kind="stable").reset_index(
        drop=True
    )
    return Summary(stats, keys, metric)


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "solver":
        return column.map(lambda s: (SOLVER_ORDER.index(s) if s in SOLVER_ORDER else 99, s))
    numeric = pd.to_numeric(column, errors="coerce")
    return numeric if numeric.notna().all() else column.astype(str)


def fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


COUNTS = ["n_ok", "n_runs", "n_no_value", *(f"n_{s}" for s in BAD_STATUSES), "n_other"]


def cell_text(stat: pd.Series, pm: str = "±") -> str:
    """'mean ± std (n=k)', with every run that is not in the statistics named beside it."""
    n = {c: int(stat[c]) for c in COUNTS}
    if n["n_ok"] == 0:
        text = "no ok run"
    elif n["n_ok"] == 1:
        text = f"{fmt(stat['mean'])} (n=1)"
    else:
        text = f"{fmt(stat['mean'])} {pm} {fmt(stat['std'], 2)} (n={n['n_ok']})"
    lost = [f"{n[f'n_{s}']} {s}" for s in BAD_STATUSES if n[f"n_{s}"]]
    if n["n_no_value"]:
        lost.append(f"{n['n_no_value']} ok without a value")
    if n["n_other"]:
        lost.append(f"{n['n_other']} other status")
    return f"{text}; {', '.join(lost)}" if lost else text


def wide(summary: Summary, pm: str = "±") -> pd.DataFrame:
    """Rows = keys, columns = solvers, cells = formatted statistics."""
    stats = summary.stats.assign(cell=summary.stats.apply(cell_text, axis=1, pm=pm))
    table = stats.pivot(index=summary.keys, columns="solver", values="cell")
    solvers = sorted(
        table.columns, key=lambda s: (SOLVER_ORDER.index(s) if s in SOLVER_ORDER else 99, s)
    )
    table = table[solvers].fillna("")
    table.columns.name = None
    # pivot sorts its rows as text (T = 10 before T = 5): keep summarise's order instead
    if summary.keys:
        order = list(dict.fromkeys(stats[summary.keys].itertuples(index=False, name=None)))
        table = table.reindex(order if len(summary.keys) > 1 else [key for (key,) in order])
    return table.reset_index()


def markdown(frame: pd.DataFrame) -> str:
    return tabulate(
        frame, headers="keys", tablefmt="github", showindex=False, disable_numparse=True
    )


def latex(frame: pd.DataFrame) -> str:
    escape = lambda text: str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    frame = frame.rename(columns=escape).map(escape)
    return tabulate(
        frame, headers="keys", tablefmt="latex_raw", showindex=False, disable_numparse=True
    )


def not_ok_runs(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    bad = runs[runs["status"] != "ok"]
    columns = [c for c in dict.fromkeys(keys + ["solver", "seed", "status", "error"]) if c in bad]
    bad = bad[columns].copy()
    if "error" in bad:
        bad["error"] = bad["error"].fillna("").astype(str).str.slice(0, 100)
    return bad


def save(prefix: str | Path, tidy: pd.DataFrame, text: str, tex: str) -> list[Path]:
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + ext) for ext in (".csv", ".md", ".tex")]
    tidy.to_csv(paths[0], index=False)
    paths[1].write_text(text + "\n")
    paths[2].write_text(tex + "\n")
    return paths


def beside_paper(summary: Summary, reference: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Our statistics with the paper's value and the difference; plus unmatched reference rows
    (reference: bilevel_bench.report.paper.load_reference)."""
    from bilevel_bench.report.paper import same as _same

    reference = reference[reference["metric"] == summary.metric]
    matched_ids, rows = set(), []
    for _, stat in summary.stats.iterrows():
        hits = [
            (i, ref)
            for i, ref in reference.iterrows()
            if _same(stat["task"], ref["task"])
            and _same(stat["dataset"], ref["dataset"])
            and _same(stat["solver"], ref["solver"])
            and all(k in stat and _same(stat[k], v) for k, v in ref["conditions"].items())
        ]
        row = {k: stat[k] for k in summary.keys + ["solver"]}
        row["ours"] = cell_text(stat)
        if hits:
            i, ref = hits[0]
            matched_ids.add(i)
            row.update(
                paper=fmt(ref["value"]),
                difference=fmt(stat["mean"] - ref["value"], 3),
                source=f"{ref['table']}, {ref['row']}, {ref['column']}",
            )
        else:
            row.update(paper="-", difference="-", source="")
        rows.append(row)
    columns = ["table", "row", "column", "task", "dataset", "solver", "metric", "value", "kind"]
    unmatched = reference.loc[~reference.index.isin(matched_ids), columns]
    return pd.DataFrame(rows), unmatched


def against(a: Summary, b: Summary, names: tuple[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Outer join of two summaries on (keys, solver): formatted statistics and B - A, plus the
    numbers behind them (columns suffixed _a / _b)."""
    on = a.keys + ["solver"]
    merged = a.stats.merge(b.stats, on=on, how="outer", suffixes=("_a", "_b"))
    merged = merged.sort_values(on, key=_sort_key, kind="stable")
    out = merged[on].copy()
    for side, name in zip(("a", "b"), names, strict=True):
        side_stats = pd.DataFrame({c: merged[f"{c}_{side}"] for c in ("mean", "std", *COUNTS)})
        out[name] = [
            cell_text(stat) if pd.notna(stat["n_runs"]) else "absent"
            for _, stat in side_stats.iterrows()
        ]
    merged["difference"] = merged["mean_b"] - merged["mean_a"]
    out["difference (B - A)"] = [fmt(x, 3) for x in merged["difference"]]
    return out.reset_index(drop=True), merged.reset_index(drop=True)
