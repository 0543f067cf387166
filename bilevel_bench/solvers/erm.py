"""Empirical risk minimisation baseline: T steps on g per upper step; u never changes.

On the denoising task this trains the network on the data chosen by task.fit_on; on any other
problem it solves the lower level for the initial u, which is the reference every bilevel solver
has to improve on.
"""

from __future__ import annotations

from bilevel_bench.solvers.alternating import Alternating


class ERM(Alternating):
    """Alternating descent without its upper step."""

    name = "erm"
    updates_upper = False
