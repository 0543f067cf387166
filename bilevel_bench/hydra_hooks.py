"""Hydra callbacks of the CLI (registered in configs/config.yaml under hydra.callbacks), and the
stderr that is held back until Hydra has composed the config.

In a module of their own, not in cli.py: `python -m bilevel_bench.cli` runs cli.py as __main__,
and Hydra, importing the callback by name, would get a second copy of cli.py whose flag the
running one never sees.
"""

from __future__ import annotations

import io
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class HeldStream:
    """A text stream that holds what is written to it until `release()`, then passes through.

    Hydra prints its own config errors (an unknown option, a key not in the config) to stderr
    and exits 1 before the run starts; an unknown config group value lists every option on a
    line of its own, with Hydra's search path after them. Holding stderr until the config is
    composed lets cli.main rewrite that message in a few lines. Everything else is the real
    stream's (isatty, fileno, encoding), so progress bars and logging see a terminal as before.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._held: io.StringIO | None = io.StringIO()

    def write(self, text: str) -> int:
        if self._held is not None:
            return self._held.write(text)
        return self.stream.write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._held is None:
            self.stream.flush()

    def take(self) -> str:
        """What was held, no longer held; from now on writes pass through."""
        held, self._held = (self._held.getvalue() if self._held is not None else ""), None
        return held

    def release(self) -> None:
        """Write out what was held; from now on writes pass through."""
        held = self.take()
        if held:
            self.stream.write(held)
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class ConfigComposed(Callback):
    """Hydra calls this once the config is composed. Hydra exits 1 on its own config errors (an
    unknown option or key), which happen before that; cli.main gives them exit code 2. The
    stderr held until then (cli.main sets `held`) is released here."""

    composed = False
    held: HeldStream | None = None

    @classmethod
    def mark(cls) -> None:
        cls.composed = True
        if cls.held is not None:
            cls.held.release()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        ConfigComposed.mark()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        ConfigComposed.mark()
