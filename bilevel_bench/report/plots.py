"""Learning curves from the runs' curve.csv: median over seeds with a 25-75% band per solver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bilevel_bench.report.runs import DEFAULT_METRICS, ReportError, choose_metric
from bilevel_bench.report.tables import MISSING, SOLVER_ORDER, row_keys

# Metrics that shrink towards 0 over orders of magnitude: shown on a log axis.
LOG_METRICS = {"upper_error", "lower_grad_norm"}
GRID_POINTS = 200
PANEL_KEYS = ["task", "dataset"]


def read_curves(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], list[str]]:
    """curve.csv of every ok run that has one; returns (runs kept, curves by run_dir, notes)."""
    notes = []
    bad = runs[runs["status"] != "ok"]
    if len(bad):
        counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
        notes.append(f"left out {len(bad)} runs that did not end ok ({counts})")
    curves = {}
    for run_dir in runs.loc[runs["status"] == "ok", "run_dir"]:
        path = Path(run_dir) / "curve.csv"
        if path.is_file():
            curves[run_dir] = pd.read_csv(path)
    missing = int((runs["status"] == "ok").sum()) - len(curves)
    if missing:
        notes.append(f"{missing} ok runs have no curve.csv here (run_dir not on this machine?)")
    if not curves:
        raise ReportError("no curve.csv found for any ok run; " + "; ".join(notes))
    return runs[runs["run_dir"].isin(curves)], curves, notes


def curve_metric(curves: dict[str, pd.DataFrame], metric: str | None) -> str:
    """The default is the first of DEFAULT_METRICS the curves hold: upper_error for problems
    with a known solution, test accuracy for data tasks."""
    columns = pd.concat([c.head(1) for c in curves.values()], ignore_index=True)
    columns = columns.drop(columns=[c for c in ("step", "time_s") if c in columns])
    return choose_metric(columns, metric, "the runs' curve.csv files")


def median_band(curves: list[pd.DataFrame], x: str, metric: str):
    """Each seed interpolated onto a shared grid up to the shortest run's end, so every point
    of the median has every seed behind it."""
    series = [c[[x, metric]].dropna().sort_values(x) for c in curves]
    series = [s for s in series if len(s)]
    if not series:
        return None
    end = min(s[x].iloc[-1] for s in series)
    start = max(s[x].iloc[0] for s in series)
    grid = np.linspace(start, end, GRID_POINTS) if end > start else np.array([start])
    values = np.stack([np.interp(grid, s[x], s[metric]) for s in series])
    q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
    return grid, median, q25, q75, len(series)


def plot(
    paths_runs: pd.DataFrame,
    metric: str | None,
    x: str,
    out: Path,
    ylim: tuple[float, float] | None = None,
) -> tuple[Path, str, list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, curves, notes = read_curves(paths_runs)
    metric = curve_metric(curves, metric)
    if any(x not in c.columns for c in curves.values()):
        raise ReportError(f"--x {x}: not a column of every curve.csv (curves have step, time_s)")
    panel_keys = [k for k in PANEL_KEYS if k in runs]
    runs, keys = row_keys(runs, panel_keys)
    line_keys = [k for k in keys if k not in panel_keys]
    panels = list(runs.groupby(panel_keys, sort=True)) if panel_keys else [((), runs)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (panel, panel_runs) in zip(axes[0], panels, strict=True):
        lines = list(panel_runs.groupby(["solver", *line_keys], sort=False))
        if len(lines) > 10:  # the default cycle has 10 colours: more lines would repeat them
            ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        for line, members in sorted(lines, key=lambda item: (_solver_rank(item[0][0]), item[0])):
            band = median_band([curves[d] for d in members["run_dir"]], x, metric)
            if band is None:
                continue
            grid, median, q25, q75, n = band
            extra = ", ".join(
                f"{k.split('.')[-1]}={v}" for k, v in zip(line_keys, line[1:], strict=True)
            )
            label = f"{line[0]} ({extra + ', ' if extra else ''}n={n})"
            (drawn,) = ax.plot(grid, median, label=label)
            ax.fill_between(grid, q25, q75, color=drawn.get_color(), alpha=0.2, linewidth=0)
        if metric in LOG_METRICS:
            ax.set_yscale("log")
        if ylim is not None:  # e.g. accuracies near the top, under a baseline's climb from chance
            ax.set_ylim(*ylim)
        title = " / ".join(map(str, panel if isinstance(panel, tuple) else (panel,)))
        ax.set_title(title or "runs")
        ax.set_xlabel("wall time (s, training only)" if x == "time_s" else "upper step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{metric}: median over seeds, band = 25-75%", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out, metric, notes


def plot_trials(
    paths_runs: pd.DataFrame, metric: str | None, x: str, out: Path
) -> tuple[list[Path], str, list[str]]:
    """The paper's Figs. 1-2: for each problem a grid of panels, one row per setting (the keys
    that tell its runs apart, e.g. solver.T) and one column per solver, each panel every trial
    (thin) and their mean (thick). One PNG per problem: OUT_<dataset>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, curves, notes = read_curves(paths_runs)
    metric = curve_metric(curves, metric)
    panel_keys = [k for k in PANEL_KEYS if k in runs]
    runs, keys = row_keys(runs, panel_keys)
    written = []
    for panel, panel_runs in runs.groupby(panel_keys, sort=True):
        solvers, setting_keys, own_keys, settings = trial_grid(panel_runs, keys, panel_keys)
        fig, axes = plt.subplots(
            len(settings), len(solvers), figsize=(3.2 * len(solvers), 2.6 * len(settings)),
            squeeze=False, sharex=True, sharey=True,
        )  # fmt: skip
        for i, setting in enumerate(settings):
            setting = setting if isinstance(setting, tuple) else (setting,)
            for j, solver in enumerate(solvers):
                ax = axes[i, j]
                members = panel_runs[panel_runs["solver"] == solver]
                for key, value in zip(setting_keys, setting, strict=True):
                    members = members[members[key] == value]
                _trials_and_mean(ax, [curves[d] for d in members["run_dir"]], x, metric)
                shown = list(zip(setting_keys, setting, strict=True)) + [
                    (k, "|".join(map(str, dict.fromkeys(members[k]))))
                    for k in own_keys
                    if (members[k] != MISSING).any()
                ]
                label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in shown)
                ax.set_title(f"{solver}" + (f" ({label})" if label else ""), fontsize=9)
                if metric in LOG_METRICS:
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
            axes[i, 0].set_ylabel(metric)
        for ax in axes[-1]:
            ax.set_xlabel("upper step" if x == "step" else "wall time (s)")
        name = "_".join(map(str, panel if isinstance(panel, tuple) else (panel,)))
        fig.suptitle(f"{name}: {metric}, every trial (thin) and their mean (thick)", fontsize=10)
        fig.tight_layout()
        path = out.with_name(f"{out.stem}_{name.split('_')[-1]}{out.suffix or '.png'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written, metric, notes


def trial_grid(panel_runs: pd.DataFrame, keys: list[str], panel_keys: list[str]):
    """(solvers, setting_keys, own_keys, settings) of one problem's grid of panels.

    Rows are the settings of the keys every solver has (T). A key only some solvers have
    (ApproxGrad's T2) goes into their panel titles (own_keys), so it does not split the grid into
    half-empty rows."""
    solvers = sorted(panel_runs["solver"].unique(), key=_solver_rank)
    candidates = [k for k in keys if k not in panel_keys]
    setting_keys = [
        k
        for k in candidates
        if all((panel_runs.loc[panel_runs["solver"] == s, k] != MISSING).any() for s in solvers)
    ]
    own_keys = [k for k in candidates if k not in setting_keys]
    # one tuple per setting (pandas' groupby(...).groups keys change type across versions)
    found = panel_runs[setting_keys].drop_duplicates().itertuples(index=False, name=None)
    settings = sorted(found, key=_numbers_first) if setting_keys else [()]
    return solvers, setting_keys, own_keys, settings


def _numbers_first(setting) -> tuple:
    """Sort key: T=5 before T=10 (labels are text in the runs table)."""
    values = setting if isinstance(setting, tuple) else (setting,)
    return tuple((0, float(v), "") if _is_number(v) else (1, 0.0, str(v)) for v in values)


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _trials_and_mean(ax, curves: list[pd.DataFrame], x: str, metric: str) -> None:
    series = [c[[x, metric]].dropna().sort_values(x) for c in curves]
    series = [s for s in series if len(s)]
    if not series:
        return
    for s in series:
        ax.plot(s[x], s[metric], color="#e0b000", linewidth=0.5, alpha=0.6)
    end = min(s[x].iloc[-1] for s in series)
    grid = np.linspace(max(s[x].iloc[0] for s in series), end, GRID_POINTS)
    mean = np.mean([np.interp(grid, s[x], s[metric]) for s in series], axis=0)
    ax.plot(grid, mean, color="#1f4e9a", linewidth=1.6, label=f"mean of {len(series)}")
    ax.legend(fontsize=7, loc="upper right")


def _solver_rank(solver: str) -> int:
    return SOLVER_ORDER.index(solver) if solver in SOLVER_ORDER else len(SOLVER_ORDER)


__all__ = ["DEFAULT_METRICS", "plot", "plot_trials"]
