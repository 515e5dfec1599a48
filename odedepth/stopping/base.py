"""The one interface every stopping rule implements, and the confidence baselines.

A rule looks only at what is known at inference: the depth reached, the hidden state and the
head's output there (never the label). It returns a *signed score* per sample; the sample stops
at the first depth where the score is >= 0. A signed score serves both sides of the design:

- discrete models (exits after blocks) evaluate it at each exit and stop at the first
  non-negative value (:meth:`StoppingRule.stop_index` on a :class:`~odedepth.DepthTrajectory`,
  or :meth:`StoppingRule.should_stop` online, one depth at a time);
- continuous models pass it to the ODE solver as a terminal event function whose zero crossing
  ends each sample's integration, so that the same rule halts a flow at its own time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..trajectory import DepthTrajectory

__all__ = ["StoppingRule", "FixedDepth", "MaxProbability", "Entropy", "Patience"]


class StoppingRule(nn.Module):
    """Base class: a per-sample signed stopping score; stop where it is >= 0.

    Subclasses implement :meth:`score`. Rules whose decision depends on the history of a
    trajectory (not only on the current depth) set `memoryless = False` and override
    :meth:`stop_index`; they cannot serve as an event function.
    """

    memoryless: bool = True

    def score(self, depth: Tensor, state: Tensor | None, logits: Tensor | None) -> Tensor:
        """`(batch,)` signed score at `depth` (`(batch,)`); stop where >= 0."""
        raise NotImplementedError

    def should_stop(self, depth: Tensor, state: Tensor | None, logits: Tensor | None) -> Tensor:
        """`(batch,)` boolean: stop now."""
        s = self.score(depth, state, logits)
        if s.dim() != 1:
            raise ValueError(f"{type(self).__name__}.score must return shape (batch,), got "
                             f"{tuple(s.shape)}")
        return s >= 0

    def stop_index(self, traj: DepthTrajectory) -> Tensor:
        """`(batch,)` index of the first depth where the rule stops (else the last visited)."""
        if not isinstance(traj, DepthTrajectory):
            raise TypeError(f"{type(self).__name__}.stop_index expects a DepthTrajectory, got "
                            f"{type(traj).__name__}")
        b, n = traj.batch_size, traj.n_depths
        depths = traj.depth_grid()
        flat_logits = traj.outputs.reshape(b * n, *traj.outputs.shape[2:])
        flat_states = None if traj.states is None else traj.states.reshape(
            b * n, *traj.states.shape[2:])
        stop = self.should_stop(depths.reshape(b * n), flat_states, flat_logits).reshape(b, n)
        return first_true_or_last(stop & traj.valid_mask(), traj.last_index())

    def event_fn(self, head: nn.Module | None = None):
        """A solver event function `g(t, h) -> (batch,)` that crosses zero where the rule stops.

        `head` maps states to logits for rules that read the prediction.
        """
        if not self.memoryless:
            raise ValueError(f"{type(self).__name__} depends on history and cannot be an event")

        def g(t, h):
            return self.score(t, h, None if head is None else head(h))

        return g


def first_true_or_last(mask: Tensor, last: Tensor) -> Tensor:
    """Index of the first true entry per row, or `last` where a row has none."""
    n = mask.shape[1]
    idx = torch.arange(n, device=mask.device).expand_as(mask)
    first = torch.where(mask, idx, torch.full_like(idx, n)).amin(dim=1)
    return torch.where(first < n, first, last)


def _check_logits(rule, logits):
    if logits is None or logits.dim() != 2:
        raise ValueError(
            f"{type(rule).__name__} needs logits of shape (batch, n_classes), got "
            f"{None if logits is None else tuple(logits.shape)}"
        )


class FixedDepth(StoppingRule):
    """Stop at a fixed depth (the fixed-horizon baseline): score = depth - horizon."""

    def __init__(self, horizon: float):
        super().__init__()
        if not math.isfinite(horizon) or horizon <= 0:
            raise ValueError(f"FixedDepth: horizon must be a positive finite number, got {horizon}")
        self.horizon = float(horizon)

    def score(self, depth, state, logits):
        return depth - self.horizon


class MaxProbability(StoppingRule):
    """Stop once the largest softmax probability reaches `threshold` in (0, 1]."""

    def __init__(self, threshold: float):
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"MaxProbability: threshold must lie in (0, 1], got {threshold}")
        self.threshold = float(threshold)

    def score(self, depth, state, logits):
        _check_logits(self, logits)
        return logits.softmax(dim=-1).amax(dim=-1) - self.threshold


class Entropy(StoppingRule):
    """Stop once the predictive entropy (nats) falls to `threshold` or below."""

    def __init__(self, threshold: float):
        super().__init__()
        if not threshold >= 0.0:
            raise ValueError(f"Entropy: threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)

    def score(self, depth, state, logits):
        _check_logits(self, logits)
        logp = logits.log_softmax(dim=-1)
        ent = -(logp.exp() * logp).sum(dim=-1)
        return self.threshold - ent


class Patience(StoppingRule):
    """Stop once the predicted class has stayed the same for `patience` consecutive depths."""

    memoryless = False

    def __init__(self, patience: int):
        super().__init__()
        if int(patience) != patience or patience < 1:
            raise ValueError(f"Patience: patience must be a positive integer, got {patience}")
        self.patience = int(patience)

    def score(self, depth, state, logits):
        raise ValueError("Patience depends on history: use stop_index on a DepthTrajectory")

    def stop_index(self, traj: DepthTrajectory) -> Tensor:
        pred = traj.outputs.argmax(dim=-1)  # (batch, n)
        same = torch.zeros_like(pred)
        run = torch.zeros(traj.batch_size, dtype=pred.dtype, device=pred.device)
        for k in range(1, traj.n_depths):
            run = torch.where(pred[:, k] == pred[:, k - 1], run + 1, torch.zeros_like(run))
            same[:, k] = run
        return first_true_or_last((same >= self.patience) & traj.valid_mask(), traj.last_index())
