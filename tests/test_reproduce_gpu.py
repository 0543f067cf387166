"""scripts/reproduce_gpu.sh without a GPU (DRY_RUN=1: the plan is printed, nothing runs): the
order of the steps, the time budget (steps that do not fit are skipped and listed with their
commands), the paper-table runs' training budgets, and configs that compose and validate, so that
the GPU session does not spend its minutes on a typo."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from solver_harness import compose_config

from bilevel_bench import runner

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce_gpu.sh"
PLANNED = re.compile(r"\] RUN  (\S+) \((\d+)s left\): (.*)$")


def dry_run(tmp_path, *args, **env):
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), *args],
        env={**os.environ, "DRY_RUN": "1", **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    planned = [PLANNED.search(line) for line in done.stdout.splitlines()]
    steps = [(m.group(1), int(m.group(2)), shlex.split(m.group(3))) for m in planned if m]
    return done, steps


def remaining(tmp_path) -> list[str]:
    lines = (tmp_path / "out" / "remaining.sh").read_text().splitlines()
    return [line for line in lines if not line.startswith("#")]


def test_a_large_budget_plans_every_step_in_order(tmp_path):
    done, steps = dry_run(tmp_path, "600")
    assert done.returncode == 0, done.stderr
    names = [name for name, _, _ in steps]
    assert names[:5] == ["tests", "bench_engine", "bench_step", "speed_fp32", "speed_tf32"]
    first_table = [names.index(f"table{n}-{r}") for n, r in
                   [(2, "mnist25_penalty"), (3, "omniglot_5w1s_penalty"), (5, "untargeted_10_penalty")]]  # fmt: skip
    assert first_table == sorted(first_table)  # Table 2, then 3, then 5
    table2 = [name for name in names if name.startswith("table2-")]
    assert len(table2) == 12 and "table2-mnist50_oracle" in table2
    assert sum(name.startswith("table3-") for name in names) == 12
    assert sum(name.startswith("table5-") for name in names) == 14
    for name, _, command in steps:
        if name.startswith("table"):
            assert "max_train_minutes=10" in command and "device=cuda:0" in command
    assert remaining(tmp_path) == []
    assert "would install .whl" in done.stdout


def test_steps_that_do_not_fit_are_skipped_and_listed(tmp_path):
    done, steps = dry_run(tmp_path, "9")
    assert done.returncode == 0, done.stderr
    assert [name for name, _, _ in steps] == ["tests", "bench_engine", "bench_step"]
    left = remaining(tmp_path)
    assert any("bench_step.py" in line and "--capture on" in line for line in left)
    assert (
        sum("bilevel_bench.cli" in line and "max_train_minutes=10" in line for line in left) == 38
    )
    assert "SKIP speed_fp32" in done.stdout


def test_a_table_run_gets_the_longest_training_budget_that_fits(tmp_path):
    done, steps = dry_run(tmp_path, "4", STEPS="table2", TABLE_MINUTES="10")
    assert done.returncode == 0, done.stderr
    (name, left, command), *rest = steps
    # 240 s left, 90 s of start-up and evaluation beside the training: 2.5 minutes of it
    assert name == "table2-mnist25_penalty" and left == 240 and rest == []
    assert "max_train_minutes=2.5" in command
    assert len(remaining(tmp_path)) == 11


@pytest.mark.parametrize(
    "args, env, message",
    [
        ([], {}, "usage"),
        (["soon"], {}, "BUDGET_MINUTES=soon"),
        (["5"], {"STEPS": "tests,nope"}, "no group 'nope'"),
    ],
)
def test_bad_arguments_stop_before_anything_runs(tmp_path, args, env, message):
    command = ["bash", str(SCRIPT)] + ([str(tmp_path / "out"), *args] if args else [])
    done = subprocess.run(
        command, env={**os.environ, "DRY_RUN": "1", **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr


def test_every_planned_run_composes_and_validates(tmp_path):
    """The Hydra overrides of every planned bilevel-bench run (Tables 2, 3, 5 and the timed
    runs) compose with the real configs and pass validation (device aside: no GPU here)."""
    _, steps = dry_run(tmp_path, "600")
    runs = [command for _, _, command in steps if "bilevel_bench.cli" in command]
    assert len(runs) == 41
    for command in runs:
        overrides = command[command.index("bilevel_bench.cli") + 1 :]
        kept = [o for o in overrides if not o.startswith(("hydra.", "device="))]
        cfg = compose_config(*kept, "device=cpu")
        runner.validate(cfg)
