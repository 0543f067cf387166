"""bilevel-bench-report on inputs a user really has (issue 14, items 4 and 14): broken CSV files
give one line that names the file, a force=true re-run is not another seed, a table of only
failed runs lists them, and compare does not subtract runtimes of two devices."""

from __future__ import annotations

import pytest
from solver_harness import compose_config

from bilevel_bench import results, runner
from bilevel_bench.report import main

MAX_LINES = 15


def refused(*args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert len((captured.out + captured.err).splitlines()) < MAX_LINES
    assert "Traceback" not in captured.err
    return captured.err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"task,dataset,solver,status\nsynthetic,smd20,rmd,ok,extra\n", "line 2: 5 fields"),
        (b"task,dataset,solver,status\x00\n\xff\xfe\x00\x01", "is binary"),
        (b'task,dataset,solver,status\nsynthetic,"smd20,rmd,ok\n', "line 2"),  # unclosed quote
    ],
    ids=["empty", "ragged", "binary", "unclosed-quote"],
)
def test_a_broken_csv_gives_one_line_naming_the_file(tmp_path, capsys, content, fragment):
    path = tmp_path / "runs.csv"
    path.write_bytes(content)
    for command in ("table", "plot"):
        message = refused(command, path, capsys=capsys)
        assert str(path) in message and fragment in message


def _two_runs_of_one_config(tmp_path):
    """What `force=true` does: the same config run again, a second row with its hash."""
    cfg = compose_config("task.iters=3", "device=cpu", f"results_dir={tmp_path}")
    first = runner.run(cfg, tmp_path / "first")[0]
    again = runner.run(cfg, tmp_path / "again")[0]
    assert first["config_hash"] == again["config_hash"]
    return again


def test_a_forced_rerun_is_not_another_seed(tmp_path, capsys):
    again = _two_runs_of_one_config(tmp_path)
    main(["table", str(tmp_path / "runs.csv")])
    out = capsys.readouterr().out
    assert "(n=1)" in out and "n=2" not in out
    assert "1 runs (1 ok)" in out and "1 older row(s) of a config run again left out" in out
    assert f"{again['upper_error']:.4g}" in out  # the latest row's value


def test_a_table_of_only_failed_runs_lists_them(tmp_path, capsys):
    csv_path = tmp_path / "runs.csv"
    for seed in (0, 1):
        results.append_row(
            csv_path,
            results.new_row(task="synthetic", dataset="smd20", solver="rmd", seed=seed,
                            status="failed", error="RuntimeError: boom", config_hash=f"h{seed}"),
        )  # fmt: skip
    main(["table", str(csv_path)])
    out = capsys.readouterr().out
    assert "no ok run; 2 failed" in out
    assert "runs not in the statistics (2)" in out and "RuntimeError: boom" in out


def test_compare_refuses_runtimes_of_two_devices(tmp_path, capsys):
    sides = []
    for side, device in (("a", "NVIDIA H200"), ("b", "cpu (x86_64, 2 cores)")):
        csv_path = tmp_path / side / "runs.csv"
        results.append_row(
            csv_path,
            results.new_row(task="synthetic", dataset="smd20", solver="rmd", seed=0, status="ok",
                            runtime_s=1.0, device=device, config_hash=side),
        )  # fmt: skip
        sides.append(csv_path)
    message = refused("compare", *sides, "--metric", "runtime_s", capsys=capsys)
    assert "2 different devices" in message and "--mix-devices" in message
    main(["compare", *map(str, sides), "--metric", "runtime_s", "--mix-devices"])
    assert "difference (B - A)" in capsys.readouterr().out
