"""Batched explicit Runge--Kutta ODE solvers with per-sample control, events and statuses.

See ``docs/ode.md``. One concept per module, re-exported flat::

    from solvers import ode
    sol = ode.solve(f, y0, (0.0, 1.0), method="dopri5", event=ode.Event(g))
"""

from .controllers import IController, PIController
from .event import Event
from .methods import (
    RK4,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    ExplicitRK,
    Heun,
    Midpoint,
    Tsit5,
)
from .solution import Solution
from .solve import solve
from .status import SolveError, Status
from .tableau import ButcherTableau

__all__ = ["solve", "Solution", "Status", "SolveError", "Event", "IController", "PIController",
           "ButcherTableau", "ExplicitRK", "Euler", "Midpoint", "Heun", "RK4", "Bosh3", "Dopri5",
           "Tsit5", "Dopri8"]
