"""Solver registry. Every module of this package that defines a Solver subclass is discovered:
a new solver is one file. Its declared hyper-parameters become the Hydra config `solver=NAME`,
each default overridable per task by configs/tuned/<task>.yaml and on the command line."""

from __future__ import annotations

import importlib
import pkgutil

from hydra.core.config_store import ConfigStore

from bilevel_bench.checks import ConfigError, names
from bilevel_bench.solvers.base import Param, Solver

SOLVERS: dict[str, type[Solver]] = {}


def _literal(value) -> str:
    """A declared default as OmegaConf grammar text (the fallback of an oc.select)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def config_node(cls: type[Solver]) -> dict:
    """The solver's config: each key takes configs/tuned/<task>.yaml's value when there is one,
    else the declared default (`bilevel-bench --cfg job --resolve` shows the result)."""
    node = {"name": cls.name}
    for key, param in cls.params.items():
        node[key] = f"${{oc.select:tuned.{cls.name}.{key},{_literal(param.default)}}}"
    return node


def register(cls: type[Solver]) -> type[Solver]:
    """Add a solver (also usable as a decorator for solvers defined outside this package)."""
    SOLVERS[cls.name] = cls
    ConfigStore.instance().store(group="solver", name=cls.name, node=config_node(cls))
    return cls


def _discover() -> None:
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Solver)
                and obj is not Solver
                and obj.__module__ == module.__name__
            ):
                register(obj)


def solver_class(name: str) -> type[Solver]:
    if name not in SOLVERS:
        raise ConfigError(
            f"solver.name={name!r} is not a registered solver; known: {names(SOLVERS)}"
        )
    return SOLVERS[name]


_discover()

__all__ = ["SOLVERS", "Param", "Solver", "register", "solver_class"]
