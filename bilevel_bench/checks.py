"""Validation of config values before any work starts: every error names the key and the fix."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any


class ConfigError(ValueError):
    """A bad config value or file; the message names the key and how to fix it."""


Check = Callable[[str, Any], None]


def positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1 (got {value!r}); e.g. {key}=10")


def non_negative_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key} must be an integer >= 0 (got {value!r}); e.g. {key}=0")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number (got {value!r})")
    if not math.isfinite(value):  # inf passes every comparison below, and nan none of them
        raise ConfigError(f"{key} must be a finite number (got {value!r})")
    return float(value)


def positive(key: str, value: Any) -> None:
    if not _number(key, value) > 0:
        raise ConfigError(f"{key} must be > 0 (got {value!r}); e.g. {key}=0.01")


def non_negative(key: str, value: Any) -> None:
    if not _number(key, value) >= 0:
        raise ConfigError(f"{key} must be >= 0 (got {value!r})")


def number(key: str, value: Any) -> None:
    _number(key, value)


def at_least_one(key: str, value: Any) -> None:
    if not _number(key, value) >= 1:
        raise ConfigError(f"{key} must be >= 1 (got {value!r}); e.g. {key}=1.1")


def fraction(key: str, value: Any) -> None:
    """In (0, 1]: a decay factor."""
    v = _number(key, value)
    if not 0 < v <= 1:
        raise ConfigError(f"{key} must be in (0, 1] (got {value!r}); e.g. {key}=0.9")


def boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false (got {value!r})")


def one_of(*choices: str) -> Check:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            raise ConfigError(
                f"{key} must be one of {', '.join(choices)} (got {value!r}); e.g. {key}={choices[0]}"
            )

    return check


def check_section(prefix: str, section: Any, rules: dict[str, Check]) -> None:
    """Apply `rules` to the keys of a config section; a missing key is an error too."""
    for key, rule in rules.items():
        full_key = f"{prefix}.{key}"
        if key not in section:
            raise ConfigError(
                f"{full_key} is missing; add it to the config or pass +{full_key}=..."
            )
        rule(full_key, section[key])


def names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))
