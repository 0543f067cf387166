"""Solver registry: one module per solver; a new solver is one file plus configs/solver/NAME.yaml."""

from __future__ import annotations

from bilevel_bench.checks import ConfigError, names
from bilevel_bench.solvers.alternating import Alternating
from bilevel_bench.solvers.approxgrad import ApproxGrad
from bilevel_bench.solvers.base import Solver
from bilevel_bench.solvers.erm import ERM
from bilevel_bench.solvers.fmd import FMD
from bilevel_bench.solvers.penalty import Penalty
from bilevel_bench.solvers.rmd import RMD

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls for cls in (Penalty, ApproxGrad, RMD, FMD, Alternating, ERM)
}


def register(cls: type[Solver]) -> type[Solver]:
    """Decorator for solvers defined outside this package."""
    SOLVERS[cls.name] = cls
    return cls


def solver_class(name: str) -> type[Solver]:
    if name not in SOLVERS:
        raise ConfigError(
            f"solver.name={name!r} is not a registered solver; known: {names(SOLVERS)}"
        )
    return SOLVERS[name]


__all__ = ["SOLVERS", "Solver", "register", "solver_class"]
