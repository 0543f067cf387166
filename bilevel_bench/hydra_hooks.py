"""Hydra callbacks of the CLI (registered in configs/config.yaml under hydra.callbacks).

In a module of their own, not in cli.py: `python -m bilevel_bench.cli` runs cli.py as __main__,
and Hydra, importing the callback by name, would get a second copy of cli.py whose flag the
running one never sees.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ConfigComposed(Callback):
    """Hydra calls this once the config is composed. Hydra exits 1 on its own config errors (an
    unknown option or key), which happen before that; cli.main gives them exit code 2."""

    composed = False

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        ConfigComposed.composed = True

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        ConfigComposed.composed = True
