"""AmIGO (Arbel & Mairal; ICLR 2022): amortised implicit gradient optimisation.

T gradient steps on v; then T2 gradient steps on z for the energy 1/2 z^T H z - grad_v f^T z,
warm-started from the previous upper step's z (the amortisation): z tracks +H^-1 grad_v f;
hypergradient grad_u f - J z. ApproxGrad with linsolve=richardson
(bilevel_bench.hypergrad.Richardson). Defaults: T2 = T = 10 and lr_q = lr_v, as benchopt's
reference code, which uses one number of inner steps and one inner step size for v and z.
"""

from __future__ import annotations

from bilevel_bench.solvers.approxgrad import ApproxGrad, fixed_solve


class AmIGO(ApproxGrad):
    name = "amigo"
    handles_constraints = False
    params = fixed_solve(
        "richardson",
        "richardson: AmIGO's warm-started gradient descent on the quadratic",
        T2=(10, "gradient steps on z per upper step"),
        lr_q=(0.01, "step on z (the declared lr_v, as the reference)"),
    )
