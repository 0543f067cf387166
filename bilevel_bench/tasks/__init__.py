"""Task registry: name -> module exposing build(cfg, device, generator)."""

from __future__ import annotations

import importlib

from bilevel_bench.checks import ConfigError, names

TASKS = {
    "synthetic": "bilevel_bench.tasks.synthetic",
    "denoise": "bilevel_bench.tasks.denoise",
    "poison": "bilevel_bench.tasks.poison",
    "fewshot": "bilevel_bench.tasks.fewshot",
}


def build_task(cfg, device, generator):
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r} is not a known task; known: {names(TASKS)}")
    return importlib.import_module(TASKS[name]).build(cfg, device, generator)
