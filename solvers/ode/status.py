"""Per-sample status codes of a solve, and the exception raised when `throw=True`."""

from __future__ import annotations

import enum

__all__ = ["Status", "SolveError"]


class Status(enum.IntEnum):
    """Why a sample stopped. Stored per sample in `Solution.status` as int64 codes.

    - `SUCCESS` (0): reached the end of its time span.
    - `EVENT` (1): a terminal event stopped it (`Solution.t` is the event time).
    - `MAX_STEPS` (2): used `max_steps` step attempts before reaching the end.
    - `DT_UNDERFLOW` (3): the step size fell below `dt_min` (or below the floating-point
      spacing of `t`) while the error estimate stayed finite: the problem is too stiff or
      singular for the tolerance (e.g. a blow-up).
    - `NONFINITE` (4): `f` kept returning NaN/inf even after shrinking the step.
    """

    SUCCESS = 0
    EVENT = 1
    MAX_STEPS = 2
    DT_UNDERFLOW = 3
    NONFINITE = 4

    @property
    def failed(self) -> bool:
        return self.value >= 2


_CAUSE = {
    Status.MAX_STEPS: "reached max_steps",
    Status.DT_UNDERFLOW: "step size underflow (dt < dt_min or below float spacing)",
    Status.NONFINITE: "non-finite values from f (NaN/inf) that shrinking the step did not cure",
}


class SolveError(RuntimeError):
    """A solve in which some samples failed (raised only when `throw=True`).

    The message names the failing sample indices, the time each reached and the cause.

    **Attributes:**

    - `solution`: the partial :class:`~solvers.ode.Solution` (statuses, states at the time
      each sample stopped, statistics), exactly what `throw=False` would have returned.
    """

    def __init__(self, message: str, solution=None):
        super().__init__(message)
        self.solution = solution


def failure_message(status, t, max_listed: int = 10) -> str:
    """Human-readable summary of the failed samples of a solve."""
    bad = (status >= 2).nonzero().flatten().tolist()
    lines = [f"ODE solve failed for {len(bad)} of {status.numel()} samples:"]
    for i in bad[:max_listed]:
        code = Status(int(status[i]))
        lines.append(f"  sample {i}: {code.name} at t={float(t[i]):.6g} ({_CAUSE[code]})")
    if len(bad) > max_listed:
        lines.append(f"  ... and {len(bad) - max_listed} more")
    lines.append("Pass throw=False to get the partial solution with per-sample statuses.")
    return "\n".join(lines)
