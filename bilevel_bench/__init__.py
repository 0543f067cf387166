"""bilevel-bench: reproducible benchmarks of bilevel optimisation solvers."""

__version__ = "0.1.0"
