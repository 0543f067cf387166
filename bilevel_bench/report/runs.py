"""Reading result rows and run directories for the report: runs.csv files, run configs, metrics."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from bilevel_bench import results

# Preferred default metric, first one present wins: accuracy for data tasks, distance to the
# solution for problems with a known optimum.
DEFAULT_METRICS = ["test_acc", "upper_error", "val_acc", "upper_loss"]
NOT_METRICS = set(results.IDENTITY + results.PROVENANCE) | {"upper_steps"}
REQUIRED = ["task", "dataset", "solver", "status"]
# Config keys that say where or how a run went, not what it computed (as in the hashes).
NOT_DISTINGUISHING = {"seed"} | results.NOT_HASHED | {f"data.{k}" for k in results.NOT_HASHED_DATA}


class ReportError(Exception):
    """A problem with the report's inputs; the message names the file or column and the fix."""


def _runs_csv(path: Path) -> Path:
    if path.is_dir() and (path / "runs.csv").is_file():
        return path / "runs.csv"
    if not path.is_file():
        raise ReportError(
            f"{path}: no such runs.csv file; pass the runs.csv that bilevel-bench appends to "
            "(<results_dir>/runs.csv, results_dir=results by default)"
        )
    return path


def read_runs_csv(csv_path: Path) -> pd.DataFrame:
    """One runs.csv as a frame; a file that is empty, binary, ragged, has an unclosed quote or
    is not a runs.csv at all gives a ReportError naming the file (and the line) instead."""
    try:
        header, _ = results.parse_csv(csv_path)  # strict: pandas would guess around bad lines
    except results.RunsCsvError as err:
        raise ReportError(str(err)) from None
    if not header:
        raise ReportError(f"{csv_path} is empty: no run has written a row to it")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ReportError(
            f"{csv_path}: columns {missing} missing; is this a runs.csv written by "
            f"bilevel-bench? (columns found: {header})"
        )
    return pd.read_csv(csv_path)


def load_runs(paths: list[str | Path]) -> pd.DataFrame:
    """All rows of the given runs.csv files, one row per run.

    Merging sweeps from several machines or re-reading the same file twice never counts a run
    twice: when a run_dir appears more than once the newest row (by timestamp) wins. A config
    run again (force=true, or a retry after a failure) counts once too: the newest row of each
    config hash wins, and `runs.attrs["superseded"]` says how many older rows were left out.
    """
    frames = []
    for path in map(Path, paths):
        csv_path = _runs_csv(path)
        frame = read_runs_csv(csv_path)
        frame["source_file"] = str(csv_path)
        _RECORDED.update(results.read_configs(csv_path.parent / results.CONFIGS))
        frames.append(frame)
    if not frames:
        raise ReportError("no runs.csv files given")
    runs = pd.concat(frames, ignore_index=True)
    if "timestamp" in runs.columns:
        runs = runs.sort_values("timestamp", kind="stable")
    runs = _latest(runs, "run_dir")
    before = len(runs)
    runs = _latest(runs, "config_hash")
    runs["status"] = runs["status"].fillna("unknown").astype(str)
    runs = runs.reset_index(drop=True)
    runs.attrs["superseded"] = before - len(runs)
    return runs


def _latest(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """The last row of each value of `key` (rows are in time order); rows without one stay."""
    if key not in runs.columns:
        return runs
    keyed = runs[runs[key].notna()].drop_duplicates(key, keep="last")
    return pd.concat([keyed, runs[runs[key].isna()].drop_duplicates()])


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Columns that hold numbers one could average: schema metrics, costs, task extras."""
    out = []
    for column in frame.columns:
        if column in NOT_METRICS or column == "source_file":
            continue
        if pd.to_numeric(frame[column], errors="coerce").notna().any():
            out.append(column)
    return out


def choose_metric(frame: pd.DataFrame, metric: str | None, where: str) -> str:
    """`metric` if it is a numeric column of `frame`, else the first default present."""
    available = metric_columns(frame)
    if metric is None:
        for candidate in DEFAULT_METRICS:
            if candidate in available:
                return candidate
        present = [c for c in DEFAULT_METRICS if c in frame.columns]
        if present and "status" in frame and not (frame["status"] == "ok").any():
            return present[0]  # only failed or diverged runs: the table lists them
        raise ReportError(
            f"{where}: none of the default metrics {DEFAULT_METRICS} has values; "
            f"choose one with --metric (available: {available})"
        )
    if metric not in available:
        state = "has no numeric values" if metric in frame.columns else "is not a column"
        raise ReportError(
            f"--metric {metric}: {metric!r} {state} in {where}; available: "
            f"{', '.join(available) or 'none'}"
        )
    return metric


@cache
def run_config(run_dir: str) -> dict | None:
    """The run's composed Hydra config, flattened to dotted keys; None when not readable here
    (e.g. a runs.csv merged from another machine)."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves on the machine that ran it
        container = OmegaConf.to_container(cfg, resolve=False)
    return results.flatten(container)


# configs recorded beside the runs.csv files read so far (results.CONFIGS), by config hash
_RECORDED: dict[str, dict] = {}


def _config_of(row) -> dict | None:
    """A row's config: its run folder's .hydra/config.yaml, else the one recorded beside its
    runs.csv (run folders stay on the machine that ran them; configs.jsonl is committed)."""
    run_dir = row.get("run_dir")
    config = run_config(run_dir) if isinstance(run_dir, str) else None
    return config if config is not None else _RECORDED.get(row.get("config_hash"))


def _config_value(row, key):
    config = _config_of(row)
    return None if config is None else config.get(key)


def attach_keys(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Make every key a column: existing columns as they are, others (e.g. `task.noise`,
    `solver.T`) read from each run's config (its run folder, else configs.jsonl)."""
    runs = runs.copy()
    for key in keys:
        if key in runs.columns:
            continue
        values = pd.Series(
            [_config_value(row, key) for _, row in runs.iterrows()], index=runs.index, dtype=object
        )
        if values.isna().all():
            raise ReportError(
                f"{key!r} is neither a column of the runs.csv files nor a key of the runs' "
                f".hydra/config.yaml; columns: {', '.join(c for c in runs.columns if c != 'source_file')}"
            )
        runs[key] = values
    return runs


def distinguishing_keys(runs: pd.DataFrame, cell: list[str]) -> list[str]:
    """Config keys that differ between the groups (group_hash) sharing one cell.

    Averaging runs of different configs (say T=5 and T=10) into one number would hide a
    difference; the table adds these keys as row keys instead. When a run's config cannot be
    read, group_hash itself becomes the key.
    """
    if "group_hash" not in runs.columns:
        return []
    keys: set[str] = set()
    for _, rows in runs.groupby(cell, dropna=False):
        groups = rows.drop_duplicates("group_hash")
        if len(groups) < 2:
            continue
        configs = [_config_of(row) for _, row in groups.iterrows()]
        if any(config is None for config in configs):
            return ["group_hash"]
        for key in set().union(*configs):
            if _distinguishing(key) and len({repr(c.get(key)) for c in configs}) > 1:
                keys.add(key)
    return sorted(k for k in keys if k not in cell)


def _distinguishing(key: str) -> bool:
    """Whether a (dotted) config key says what was computed: not seed, results_dir, the batch
    size `runs`, the tuned table (it acts through the solver keys)..."""
    return key not in NOT_DISTINGUISHING and key.split(".")[0] not in results.NOT_HASHED


def find_run_dirs(paths: list[str | Path]) -> pd.DataFrame:
    """Run records (one per run directory) from run dirs, sweep dirs or runs.csv files."""
    records, csv_files = [], []
    for path in map(Path, paths):
        if path.suffix == ".csv" or (path.is_dir() and (path / "runs.csv").is_file()):
            csv_files.append(path)
        elif (path / "result.json").is_file():
            records.append(_result_record(path))
        elif path.is_dir():
            found = sorted(path.glob("**/result.json"))
            if not found:
                raise ReportError(f"{path}: no result.json below this folder and no runs.csv in it")
            records += [_result_record(p.parent) for p in found]
        else:
            raise ReportError(f"{path}: no such run directory or runs.csv file")
    frames = [pd.DataFrame(records)] if records else []
    if csv_files:
        frames.append(load_runs(csv_files))
    runs = pd.concat(frames, ignore_index=True)
    runs["run_dir"] = runs["run_dir"].astype(str)
    return runs.drop_duplicates("run_dir", keep="last").reset_index(drop=True)


def _result_record(run_dir: Path) -> dict:
    with open(run_dir / "result.json") as handle:
        record = json.load(handle)
    record["run_dir"] = str(run_dir.resolve())
    return record
