"""Per-sample events: sign changes of `fn(t, y)`, located on the dense output, with
implicit-function-theorem gradients for the event time.

References:
    Hairer, Norsett & Wanner, *Solving ODEs I*, II.6 (dense output and event location).
    Dowell & Jarratt, "A modified regula falsi method for computing the root of an equation",
    BIT 11 (1971) (the Illinois algorithm).
    Chen, Amos & Nickel, "Learning neural event functions for ordinary differential
    equations", ICLR 2021 (implicit-function-theorem gradient of the event time).
"""

from __future__ import annotations

import torch

__all__ = ["Event"]


class Event:
    """An event: the first sign change of ``fn(t, y)`` along each sample's trajectory.

    **Arguments:**

    - `fn`: ``fn(t, y) -> (batch,)`` (or ``fn(t, y, args)`` when `solve` gets ``args=``). It
      must be batch-elementwise (sample i's value depends only on sample i): with compaction it
      sees only the active samples. Its parameters (e.g. of a learned stopping boundary) get
      gradients through the event time; they need not be part of the ODE state.
    - `direction`: ``+1`` fires on ``-`` to ``+`` (``fn`` goes from < 0 to >= 0), ``-1`` on
      ``+`` to ``-``, ``0`` on either.
    - `terminal`: stop the sample at the event (status ``EVENT``). Otherwise the first
      crossing time is recorded in ``Solution.t_event`` and the sample continues.
    - `tol`: absolute tolerance on the event time; default a few machine epsilons relative
      to the step in which the root lies.

    Sign changes are detected between accepted steps (a double crossing inside one step is
    not seen). A function exactly zero at ``t0`` does not fire at ``t0``.

    **Returns:** an event object for ``ode.solve(event=...)``.
    """

    def __init__(self, fn, direction: int = 0, terminal: bool = True, tol: float | None = None):
        if not callable(fn):
            raise TypeError(f"Event: fn must be callable, got {type(fn).__name__}")
        if direction not in (-1, 0, 1):
            raise ValueError(f"Event: direction must be -1, 0 or +1, got {direction!r}")
        if tol is not None and not tol > 0:
            raise ValueError(f"Event: tol must be positive, got {tol!r}")
        self.fn, self.direction, self.terminal, self.tol = fn, int(direction), bool(terminal), tol

    def __repr__(self) -> str:
        return (f"Event({getattr(self.fn, '__name__', self.fn)!r}, direction={self.direction}, "
                f"terminal={self.terminal})")


def crossed(g_old, g_new, direction: int):
    """Per-sample sign change of the requested direction between two accepted points.

    A crossing needs ``g_old != 0`` so that a function exactly zero at the start of the step
    (in particular at ``t0``) does not fire there.
    """
    if direction > 0:
        return (g_old < 0) & (g_new >= 0)
    if direction < 0:
        return (g_old > 0) & (g_new <= 0)
    return ((g_old < 0) & (g_new >= 0)) | ((g_old > 0) & (g_new <= 0))


def illinois(gfun, g_lo, g_hi, tol_theta, max_iter: int = 100):
    """Vectorised Illinois (modified regula falsi) root finding for ``theta`` in ``[0, 1]``.

    **Arguments:**

    - `gfun`: ``theta (m,) -> g (m,)``.
    - `g_lo`, `g_hi`: values at ``theta = 0`` and ``1`` (of opposite sign or ``g_hi == 0``).
    - `tol_theta`: ``(m,)`` tolerance on theta.

    **Returns:** ``theta (m,)``: the end of the final bracket on the side where the event has
    fired (same sign as ``g_hi``), so that the located point is never before the crossing by
    more than the tolerance.
    """
    a = torch.zeros_like(g_lo)  # bracket end that has not fired (sign of g_lo)
    b = torch.ones_like(g_hi)  # bracket end that has fired (sign of g_hi, or zero)
    ga, gb = g_lo, g_hi
    sb = torch.sign(g_hi)
    done = g_hi == 0  # the full step is wider than any tolerance
    kept_a = torch.zeros_like(done)  # Illinois: the a end was kept in the last update
    kept_b = torch.zeros_like(done)
    # Invariant: a <= b (every new point lies inside [a, b] and replaces the end whose
    # sign it shares), and on rows not done ga, gb have strictly opposite signs.
    for _ in range(max_iter):
        width = b - a
        c = a - ga * width / (gb - ga)  # regula falsi (rows already done may give NaN)
        # Stay at least tol inside the bracket: when regula falsi lands (numerically) on an
        # end, the next evaluation tol away from it closes the bracket to width tol instead
        # of creeping towards the root (which made e.g. linear g take ~50 iterations).
        margin = torch.minimum(tol_theta, 0.5 * width)
        c = torch.clamp(c, a + margin, b - margin)  # = min(max(c, a + margin), b - margin)
        gc = gfun(c)
        # c has fired when g(c) has the sign of the fired end, or is zero.
        # (gc * sb: sb is +-1 on rows not done, so this is sign(gc) * sb without the sign op;
        # rows already done are not updated whatever it gives.)
        fired = gc * sb >= 0
        upd = ~done
        fb, fa = fired & upd, upd > fired  # (bool > bool: and not)
        b, gb = torch.where(fb, c, b), torch.where(fb, gc, gb)
        a, ga = torch.where(fa, c, a), torch.where(fa, gc, ga)
        # Illinois: an end kept twice in a row has its value halved (keeps its sign).
        ga = torch.where(fb & kept_a, 0.5 * ga, ga)
        gb = torch.where(fa & kept_b, 0.5 * gb, gb)
        # Rows already done keep flags that are never read again (fb, fa are False there).
        kept_a, kept_b = fb, fa
        # NaN from the event function: stop at the last fired point rather than spin.
        done = done | (b - a <= tol_theta) | (gc == 0) | torch.isnan(gc)
        if bool(done.all()):
            break
    return b
