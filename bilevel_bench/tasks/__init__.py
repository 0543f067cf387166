"""Task registry: every module of this package with a `build(cfg, device, seeds)` function is a
task, named after its module (configs/task/NAME.yaml selects it)."""

from __future__ import annotations

import importlib
import pkgutil

from bilevel_bench.checks import ConfigError, names


def task_modules() -> dict[str, str]:
    found = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if callable(getattr(module, "build", None)):
            found[module_info.name] = module.__name__
    return found


def build_task(cfg, device, seeds):
    tasks = task_modules()
    name = cfg.task.name
    if name not in tasks:
        raise ConfigError(f"task.name={name!r} is not a known task; known: {names(tasks)}")
    return importlib.import_module(tasks[name]).build(cfg, device, seeds)


def dataset_name(cfg) -> str:
    """The rows' dataset column, known before the task is built (so that a run that fails while
    building still names it): the task module's own `dataset_name(cfg)`, else dataset.name."""
    module = task_modules().get(cfg.task.name)
    own = getattr(importlib.import_module(module), "dataset_name", None) if module else None
    return own(cfg) if own is not None else str(cfg.dataset.name)
