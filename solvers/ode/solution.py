"""The result of a batched solve: per-sample final states, statuses, statistics, dense output."""

from __future__ import annotations

import torch

from .status import Status

__all__ = ["Solution", "DenseOutput"]


class DenseOutput:
    """Piecewise-polynomial continuous extension of every sample's accepted steps.

    Built by `solve(..., dense_output=True)`; evaluated by :meth:`Solution.interpolate`.
    Step ``r`` of sample ``sid[r]`` covers ``[t_start[r], t_end[r]]`` (in its direction) and
    ``y(t_start + theta h) = y_start + sum_j theta^(j+1) coef[r, j]``.
    """

    def __init__(self, batch, sid, t_start, t_end, h, y_start, coef, direction, t0):
        order = torch.sort(sid, stable=True).indices  # steps were appended in time order
        self.batch = batch
        self.sid, self.t_start, self.t_end, self.h = sid[order], t_start[order], t_end[order], h[order]
        self.y_start, self.coef = y_start[order], coef[order]
        self.direction, self.t0 = direction, t0
        counts = torch.bincount(self.sid, minlength=batch)
        self.offset = torch.cumsum(counts, 0) - counts
        self.counts = counts
        width = max(int(counts.max()) if counts.numel() else 0, 1)
        # Per-sample padded table of step end times in "forward" time tau = direction * t.
        col = torch.arange(self.sid.numel(), device=sid.device) - self.offset[self.sid]
        ends = torch.full((batch, width), float("inf"), dtype=t_end.dtype, device=t_end.device)
        ends[self.sid, col] = self.direction[self.sid] * self.t_end
        self.ends = ends

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """Evaluate at ``t`` of shape ``(batch, n)``; NaN outside each sample's solved range."""
        b, n = t.shape
        tau = self.direction[:, None] * t
        pos = torch.searchsorted(self.ends, tau.contiguous())
        cnt = self.counts[:, None]
        pos = torch.minimum(pos, (cnt - 1).clamp(min=0))
        r = (self.offset[:, None] + pos).reshape(-1)
        r = r.clamp(max=max(self.sid.numel() - 1, 0))
        ts, h = self.t_start[r].reshape(b, n), self.h[r].reshape(b, n)
        theta = torch.where(h != 0, (t - ts) / torch.where(h != 0, h, torch.ones_like(h)),
                            torch.zeros_like(h))
        coef = self.coef[r]  # (b*n, deg, *state)
        th = theta.reshape(-1, *([1] * (coef.dim() - 2)))
        # Horner: y = y0 + theta*(c1 + theta*(c2 + ...)).
        acc = coef[:, -1]
        for j in range(coef.shape[1] - 2, -1, -1):
            acc = coef[:, j] + th * acc
        y = self.y_start[r] + th * acc
        y = y.reshape(b, n, *y.shape[1:])
        t_lo = self.direction[:, None] * self.t0[:, None]
        last = self.ends.gather(1, (cnt - 1).clamp(min=0))
        ok = (tau >= t_lo - 0) & (tau <= last) & (cnt > 0)
        # A zero-length span (direction 0) is solved at t0 only.
        ok = ok & ((self.direction[:, None] != 0) | (t == self.t0[:, None]))
        ok = ok.reshape(b, n, *([1] * (y.dim() - 2)))
        return torch.where(ok, y, torch.full_like(y, float("nan")))


class Solution:
    """Result of :func:`solvers.ode.solve`.

    **Attributes:**

    - `t`: ``(batch,)`` time each sample stopped at (``t1``, the event time, or where it failed).
    - `y`: ``(batch, *state)`` state there.
    - `ts`, `ys`: ``(batch, n)`` evaluation times and ``(batch, n, *state)`` states at
      `t_eval` (NaN after a sample stopped early), or ``None``.
    - `status`: ``(batch,)`` int64 codes, see :class:`~solvers.ode.Status`.
    - `stats`: dict of ``(batch,)`` tensors: ``nfe`` (f evaluations), ``n_steps`` (step
      attempts), ``n_accepted``, ``n_rejected``, ``event_mask`` (bool: the event fired).
    - `t_event`: ``(batch,)`` first event time (terminal or not), NaN where none; ``None``
      without an event.
    - `success`: ``(batch,)`` bool, status is SUCCESS or EVENT.

    **Methods:** `interpolate(t)` (only with ``dense_output=True``).
    """

    def __init__(self, t, y, status, stats, ts=None, ys=None, t_event=None, dense=None):
        self.t, self.y, self.status, self.stats = t, y, status, stats
        self.ts, self.ys, self.t_event, self._dense = ts, ys, t_event, dense

    @property
    def success(self) -> torch.Tensor:
        return self.status <= int(Status.EVENT)

    def interpolate(self, t) -> torch.Tensor:
        """Dense output at ``t``: a scalar, ``(batch,)`` or ``(batch, n)``.

        **Arguments:**

        - `t`: times, each inside the sample's solved range ``[t0, sol.t]``.

        **Returns:** ``(batch, *state)`` for a scalar or ``(batch,)`` argument, ``(batch, n,
        *state)`` for ``(batch, n)``; NaN where a time is outside the sample's solved range.
        Differentiable with respect to everything the solve was differentiable in.
        """
        if self._dense is None:
            raise ValueError("interpolate() needs solve(..., dense_output=True)")
        d = self._dense
        tt = torch.as_tensor(t, dtype=d.t_start.dtype, device=d.t_start.device)
        if tt.dim() == 0:
            return d(tt.expand(d.batch)[:, None])[:, 0]
        if tt.dim() == 1:
            if tt.shape[0] != d.batch:
                raise ValueError(f"interpolate: t of shape (batch,) must have batch={d.batch} "
                                 f"entries, got {tt.shape[0]}")
            return d(tt[:, None])[:, 0]
        if tt.dim() == 2 and tt.shape[0] == d.batch:
            return d(tt)
        raise ValueError(f"interpolate: t must be a scalar, (batch,) or (batch, n) with "
                         f"batch={d.batch}; got shape {tuple(tt.shape)}")

    def __repr__(self) -> str:
        counts = {s.name: int((self.status == s.value).sum()) for s in Status}
        counts = {k: v for k, v in counts.items() if v}
        return f"Solution(batch={self.t.shape[0]}, status={counts})"
