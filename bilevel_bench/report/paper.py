"""Every number the paper publishes, beside ours: `bilevel-bench-report paper RUNS.csv...`.

results/paper_reference.csv holds the paper's numbers, one per row: the table and the cell
(`table`, `row`, `column`), what it measures as this project's rows and config keys (`task`,
`dataset`, `solver`, `metric`, `setting`: `key=value;...`), the value with its spread (`sd`,
`spread`: sd or ci95, `n` runs) and `kind`: `ours` (a method this project runs) or `cited`
(another paper's published number, not reimplemented here). The page renders each table in
the paper's layout with our mean ± s.d. (n) beside each cell, the difference, and whether it is
within one s.d.; a cell we cannot run here says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bilevel_bench.report.runs import ReportError, attach_keys
from bilevel_bench.report.tables import fmt

REFERENCE_COLUMNS = [
    "table", "row", "column", "task", "dataset", "setting", "solver", "metric", "value", "sd",
    "spread", "n", "kind", "note",
]  # fmt: skip
# datasets this environment cannot download (no dataset server is reachable)
UNAVAILABLE = {
    "cifar10": "CIFAR-10 cannot be fetched in this environment",
    "svhn": "SVHN cannot be fetched in this environment",
    "miniimagenet": "Mini-ImageNet cannot be fetched in this environment",
    "dogfish": "the dog-fish set cannot be fetched in this environment",
}
BASELINE_OF_GD = "alternating"  # Table 4's GD column, the unit of its ratios


def load_reference(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise ReportError(
            f"{path}: paper reference file not found; pass --reference PATH "
            f"(a CSV with columns {', '.join(REFERENCE_COLUMNS)})"
        )
    reference = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REFERENCE_COLUMNS if c not in reference.columns]
    if missing:
        raise ReportError(
            f"{path}: columns {missing} missing (need {', '.join(REFERENCE_COLUMNS)})"
        )
    reference["value"] = pd.to_numeric(reference["value"])
    reference["sd"] = pd.to_numeric(reference["sd"], errors="coerce")  # empty: not given
    reference["conditions"] = reference["setting"].map(parse_setting)
    return reference


def parse_setting(setting: str) -> dict[str, str]:
    """'task.noise=0.25;model.name=cnn' -> {'task.noise': '0.25', 'model.name': 'cnn'}"""
    pairs = [p.strip() for p in setting.split(";") if p.strip()]
    return dict(p.split("=", 1) for p in pairs)


def setting_keys(reference: pd.DataFrame) -> list[str]:
    return sorted(set().union(*reference["conditions"]))


def same(ours, theirs: str) -> bool:
    """A config or column value against the reference's text (numbers compared as numbers)."""
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return False
    try:
        return math.isclose(float(ours), float(theirs))
    except (TypeError, ValueError):
        return str(ours).strip().lower() == theirs.strip().lower()


@dataclass
class Ours:
    mean: float
    sd: float
    n: int


def matching_runs(runs: pd.DataFrame, ref: pd.Series) -> pd.DataFrame:
    """The ok runs of the reference's task, dataset and solver whose config satisfies its setting
    and that have a value of its metric."""
    if ref["metric"] not in runs:
        return runs.iloc[0:0]
    mask = (runs["status"] == "ok") & pd.to_numeric(runs[ref["metric"]], errors="coerce").notna()
    for column in ("task", "dataset", "solver"):
        mask &= runs[column].astype(str).str.lower() == ref[column].lower()
    candidates = runs[mask]
    if candidates.empty:
        return candidates
    try:
        candidates = attach_keys(candidates, list(ref["conditions"]))
    except ReportError:  # a key none of them records: none is known to match
        return candidates.iloc[0:0]
    keep = candidates.apply(
        lambda run: all(same(run[k], v) for k, v in ref["conditions"].items()), axis=1
    )
    return candidates[keep.astype(bool)]


def ours_for(runs: pd.DataFrame, ref: pd.Series) -> Ours | None:
    matched = matching_runs(runs, ref)
    if matched.empty:
        return None
    values = pd.to_numeric(matched[ref["metric"]], errors="coerce").dropna()
    sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return Ours(float(values.mean()), sd, len(values))


def paper_text(ref: pd.Series) -> str:
    if math.isnan(ref["sd"]):
        return fmt(ref["value"])
    spread = " (95% CI)" if ref["spread"] == "ci95" else ""
    return f"{fmt(ref['value'])} ± {fmt(ref['sd'], 3)}{spread}"


def why_not_run(ref: pd.Series) -> str:
    if ref["kind"] == "cited":
        return "cited, not reimplemented"
    return UNAVAILABLE.get(ref["dataset"], "no run at this setting yet")


def within(ref: pd.Series, ours: Ours) -> bool:
    """|ours - paper| at most one s.d.: the paper's where it gives one, else ours."""
    spread = ref["sd"] if not math.isnan(ref["sd"]) else ours.sd
    return not math.isnan(spread) and abs(ours.mean - ref["value"]) <= spread


def cell(ref: pd.Series, ours: Ours | None) -> str:
    paper = paper_text(ref)
    if ours is None:
        return f"{paper} · *{why_not_run(ref)}*"
    spread = "" if math.isnan(ours.sd) else f" ± {fmt(ours.sd, 2)}"
    mark = "✓" if within(ref, ours) else "✗"
    difference = f"{ours.mean - ref['value']:+.2f}"
    return f"{paper} · **ours {fmt(ours.mean)}{spread} (n={ours.n})**, {difference} {mark}"


def timing_cell(ref: pd.Series, gd_ref: pd.Series, ours: Ours | None, gd: Ours | None) -> str:
    """Table 4: seconds on other hardware, so the comparison is each method's ratio to GD."""
    paper_ratio = ref["value"] / gd_ref["value"]
    paper = f"{fmt(ref['value'])} s ({paper_ratio:.2f}x GD)"
    if ours is None or gd is None:
        return f"{paper} · *{why_not_run(ref)}*"
    ratio = ours.mean / gd.mean
    return f"{paper} · **ours {fmt(ours.mean, 3)} s ({ratio:.2f}x GD)**"


def render_table(name: str, table: pd.DataFrame, runs: pd.DataFrame) -> tuple[str, dict]:
    """One paper table in its layout; returns the markdown and counts of its cells."""
    rows = list(dict.fromkeys(table["row"]))
    columns = list(dict.fromkeys(table["column"]))
    counts = {"cells": 0, "ours": 0, "run": 0, "within": 0}
    found = {i: ours_for(runs, ref) for i, ref in table.iterrows()}
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        texts = []
        for column in columns:
            hit = table[(table["row"] == row) & (table["column"] == column)]
            if hit.empty:
                texts.append("–")
                continue
            i, ref = next(hit.iterrows())
            counts["cells"] += 1
            counts["ours"] += ref["kind"] == "ours"
            counts["run"] += found[i] is not None
            if found[i] is not None and ref["metric"] != "runtime_s":
                counts["within"] += within(ref, found[i])
            if ref["metric"] == "runtime_s":
                gd = table[(table["row"] == row) & (table["solver"] == BASELINE_OF_GD)]
                j, gd_ref = next(gd.iterrows())
                texts.append(timing_cell(ref, gd_ref, found[i], found[j]))
            else:
                texts.append(cell(ref, found[i]))
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines), counts


def render(reference: pd.DataFrame, runs: pd.DataFrame, sources: list[str]) -> str:
    parts = [
        "# The paper, side by side",
        "",
        "Every number published in *Penalty Method for Inversion-Free Deep Bilevel Optimization*",
        "(Mehra & Hamm, ACML 2021; main text and supplement), in the layout of its tables, with",
        "this project's result beside it where it ran the same setting. Each cell: the paper's",
        "value · **ours: mean ± s.d. over seeds (n)**, the difference, and ✓ when it is within one",
        "s.d. (the paper's where it gives one, else ours). A cell without our number says why.",
        "The paper's numbers: `results/paper_reference.csv` (transcribed from the paper).",
        "",
        "Made by `scripts/paper_page.sh` from: " + ", ".join(f"`{s}`" for s in sources) + ".",
    ]
    for name, table in reference.groupby("table", sort=False):
        text, counts = render_table(name, table, runs)
        summary = (
            f"{counts['cells']} numbers, {counts['ours']} of methods this project runs, "
            f"{counts['run']} with our result"
        )
        if counts["run"] and not (table["metric"] == "runtime_s").all():
            summary += f", {counts['within']} of them within one s.d."
        notes = sorted({n for n in table["note"] if n})
        parts += ["", f"## {name}", "", summary + ".", "", text]
        parts += [""] + [f"- {note}" for note in notes] if notes else []
    return "\n".join(parts) + "\n"
