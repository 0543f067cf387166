"""Result rows: schema, config hashes, environment capture, and atomic appends to runs.csv."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from bilevel_bench.checks import ConfigError
from bilevel_bench.files import replacing

# `baseline`: which of the paper's baselines a run is (e.g. oracle, val_only), empty otherwise
IDENTITY = ["task", "dataset", "solver", "baseline", "seed", "status"]
METRICS = ["test_acc", "val_acc", "upper_loss", "lower_grad_norm", "upper_error"]
COST = ["runtime_s", "peak_mem_mb", "upper_steps"]
# How it ran: `runs` = K, the number of seeds computed together (runtime_s and peak_mem_mb are
# the whole batch's, so they are never averaged with those of another K); `capture`: whether the
# upper steps were replayed from a CUDA graph (bilevel_bench.capture); `precision`: fp32, tf32
# or bf16 (bilevel_bench.precision).
HOW = ["runs", "capture", "precision"]
PROVENANCE = [
    "git_sha",
    "dirty",
    "config_hash",
    "group_hash",
    "torch",
    "device",
    "hostname",
    "timestamp",
    "run_dir",
    "error",
]
COLUMNS = IDENTITY + METRICS + COST + HOW + PROVENANCE

# Keys that say where output goes or how to run, not what is computed: left out of the hashes.
# `runs` too: run k of a batch computes what the single run of that seed computes, and `tuned`
# acts through the solver values it sets (which are hashed).
# `engine` (engine.capture): a captured step replays the kernels of the eager one on the same
# inputs, so it computes the same numbers (tests/test_gpu.py: 1e-5 relative after 50 upper
# steps); only the launch overhead differs, and the row's `capture` column says which it was.
NOT_HASHED = {
    "results_dir", "force", "progress", "checkpoint_every", "slurm", "runs", "tuned", "engine",
}  # fmt: skip
NOT_HASHED_DATA = {"root", "download"}
# Keys added after results were committed, with the default they had implicitly before: a key
# at that default is left out of the hash, so every earlier config hash (and with it skip-if-done
# and resume) stands. precision changes the numbers, so fp32 is its default; earlier rows are
# fp32, except that on CUDA PyTorch's own default let cuDNN convolutions use TF32
# (bilevel_bench.precision: fp32 now means IEEE fp32).
HASHED_UNLESS_DEFAULT = {
    "max_train_minutes": None,
    "task.baseline_epochs": None,
    "precision": "fp32",
}


def _hashable(cfg: DictConfig, runs: int | None = None) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True)
    if runs is not None:  # the batch size it was (or will be) computed with
        container["runs"] = runs
    # Under a time budget a batch of runs gets fewer steps than a single run (each of its steps
    # costs more): then the batch size is part of what was computed.
    budgeted_batch = (
        container.get("max_train_minutes") is not None and container.get("runs", 1) != 1
    )
    container = {
        k: v
        for k, v in container.items()
        if (k not in NOT_HASHED or (k == "runs" and budgeted_batch)) and k != "hydra"
    }
    for key, default in HASHED_UNLESS_DEFAULT.items():
        *parents, leaf = key.split(".")
        section = container
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and section.get(leaf, default) == default:
            section.pop(leaf, None)
    if isinstance(container.get("data"), dict):
        container["data"] = {k: v for k, v in container["data"].items() if k not in NOT_HASHED_DATA}
    return container


CONFIGS = "configs.jsonl"  # beside runs.csv: each row's config, by config hash


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"task": {"noise": 0.5}} -> {"task.noise": 0.5}; lists as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def run_config(cfg: DictConfig, seed: int, runs: int) -> dict[str, Any]:
    """One run's resolved config, flattened (what a table needs to tell settings apart)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container = {k: v for k, v in container.items() if k != "hydra"}
    container.update(seed=seed, runs=runs)
    return flatten(container)


def append_configs(path: Path, configs: dict[str, dict[str, Any]]) -> None:
    """Record configs by hash in `path` (configs.jsonl), once each, under a file lock: rows
    can then be matched on any config key (the report, the paper page) without their run
    folders, which stay on the machine that ran them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=600):
        known = set(read_configs(path))
        lines = [
            json.dumps({"config_hash": h, "config": c}, sort_keys=True, default=str) + "\n"
            for h, c in configs.items()
            if h not in known
        ]
        if lines:
            with open(path, "a") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())


def read_configs(path: Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return {}
    configs = {}
    with open(path) as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                configs[entry["config_hash"]] = entry["config"]
    return configs


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig, seed: int | None = None, runs: int | None = None) -> str:
    """The hash of the single run of `seed` (default: cfg.seed): the same whether the run was
    computed alone or as one of a batch of runs, so that skip, resume and tables treat them alike
    (except under max_train_minutes, where `runs`, default cfg.runs, counts)."""
    container = _hashable(cfg, runs)
    if seed is not None:
        container["seed"] = seed
    return _digest(container)


def batch_key(cfg: DictConfig, seeds: list[int]) -> str:
    """Identifies one batched computation (its checkpoint): the config and the exact seeds. A
    single run's key is its config hash."""
    if len(seeds) == 1:
        return config_hash(cfg, seeds[0], runs=1)
    first = config_hash(cfg, seeds[0], runs=len(seeds))
    return _digest({"config_hash": first, "seeds": list(seeds)})


def group_hash(cfg: DictConfig) -> str:
    """Same as config_hash but without the seed: rows of one group differ only by seed."""
    container = _hashable(cfg)
    container.pop("seed", None)
    return _digest(container)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(device: torch.device) -> dict[str, Any]:
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": sha or "unknown",
        "dirty": bool(status) if status is not None else None,
        "torch": torch.__version__,
        "device": device_name(device),
        "hostname": socket.gethostname(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _clean(value: Any) -> Any:
    """Plain Python scalars for CSV / JSON (tensors, numpy numbers, NaN -> empty)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # keep inf / nan visible instead of an empty cell
    return value


def write_json(path: Path, payload: dict) -> None:
    """Atomic: write beside the target, then rename over it."""
    with replacing(path) as handle:
        json.dump({k: _clean(v) for k, v in payload.items()}, handle, indent=2, default=str)


RUNS_CSV = "runs.csv"
# a runs.csv without these columns was not written by bilevel-bench
OWN_COLUMNS = ["task", "dataset", "solver", "seed", "status", "config_hash"]


class RunsCsvError(ConfigError):
    """A runs.csv that cannot be appended to safely; bilevel-bench never rewrites such a file."""


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a runs.csv; RunsCsvError names the first line that does not parse."""
    header, records = parse_csv(Path(path))
    return [dict(zip(header, record, strict=True)) for record in records]


def parse_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, records) of a CSV file, every record with the header's number of fields; a
    missing or empty file has no header. Raises RunsCsvError naming the file and the bad line."""
    if not path.exists() or path.stat().st_size == 0:
        return [], []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise _binary(path) from None
    if "\x00" in text:
        raise _binary(path)
    # strict: an unclosed or stray quote is an error, not a field that swallows the next lines
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] = []
    records: list[list[str]] = []
    line = 1  # where the record being read starts (a quoted field may span lines)
    try:
        for record in reader:
            if not header:
                header = record
            elif record and len(record) != len(header):
                raise _bad_line(path, line, f"{len(record)} fields, the header has {len(header)}")
            elif record:
                records.append(record)
            line = reader.line_num + 1
    except csv.Error as err:
        raise _bad_line(path, line, str(err)) from None
    return header, records


def _binary(path: Path) -> RunsCsvError:
    return RunsCsvError(f"{path} is binary, not a CSV text file: move it away")


def _bad_line(path: Path, line: int, problem: str) -> RunsCsvError:
    return RunsCsvError(
        f"{path}, line {line}: {problem}. Repair or delete that line (bilevel-bench never "
        "rewrites a broken runs.csv)"
    )


def check_results_dir(results_dir: Path) -> None:
    """Before any work: results_dir is a writable folder and its runs.csv, if there is one, was
    written by bilevel-bench and parses. Raises ConfigError naming the problem and the fix."""
    folder = Path(results_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"results_dir={folder} is a file, not a folder: choose another results_dir"
        )
    runs_csv = folder / RUNS_CSV
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(
            dir=folder
        ):  # what permissions alone do not tell (root, ro mounts)
            pass
        if runs_csv.exists():
            with open(runs_csv, "a"):  # appendable? (appending nothing leaves it as it was)
                pass
    except OSError as err:
        raise ConfigError(
            f"results_dir={folder} is not writable ({err.strerror or err}: "
            f"{err.filename or folder}): fix its permissions or choose another results_dir"
        ) from None
    header, _ = parse_csv(runs_csv)
    missing = [column for column in OWN_COLUMNS if column not in header]
    if header and missing:
        raise RunsCsvError(
            f"{runs_csv} was not written by bilevel-bench (no {', '.join(missing)} column): "
            "move it away or choose another results_dir"
        )


def find_ok_row(path: Path, config_hash: str) -> dict[str, str] | None:
    """The latest row of runs.csv with this config hash and status ok, if any."""
    path = Path(path)
    if not path.exists():
        return None
    with FileLock(str(path) + ".lock", timeout=600):  # never read half of a concurrent append
        rows = read_rows(path)
    done = [r for r in rows if r.get("config_hash") == config_hash and r.get("status") == "ok"]
    return done[-1] if done else None


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row to a CSV under a file lock; rewrite atomically when new columns appear.

    Other processes either see the file before or after the append, never a torn row.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {k: _clean(v) for k, v in row.items()}
    with FileLock(str(path) + ".lock", timeout=600):
        existing_header: list[str] = []
        if path.exists() and path.stat().st_size > 0:
            with open(path, newline="") as handle:
                existing_header = next(csv.reader(handle), [])
        new_columns = [k for k in row if k not in existing_header]
        if existing_header and not new_columns:
            buffer = io.StringIO()
            csv.DictWriter(buffer, fieldnames=existing_header).writerow(row)
            with open(path, "a", newline="") as handle:
                handle.write(buffer.getvalue())
                handle.flush()
                os.fsync(handle.fileno())
            return
        header = _ordered_header(existing_header + new_columns)
        rows = read_rows(path) + [row]  # raises on a broken file: it is never rewritten
        with replacing(path) as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)


def _ordered_header(columns: list[str]) -> list[str]:
    """Schema columns first in their fixed order, task-specific metrics after them."""
    known = [c for c in COLUMNS if c in columns]
    extra = [c for c in dict.fromkeys(columns) if c not in COLUMNS]
    tail = [c for c in known if c in PROVENANCE]
    head = [c for c in known if c not in PROVENANCE]
    return head + extra + tail


def new_row(**fields: Any) -> dict[str, Any]:
    """A row with every schema column present (empty where it does not apply)."""
    row = {column: None for column in COLUMNS}
    row.update(fields)
    return row
