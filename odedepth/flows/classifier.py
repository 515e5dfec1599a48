"""ContinuousDepthClassifier: embed -> ODE flow -> head, with per-sample depth."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..trajectory import DepthTrajectory
from .ode_block import FlowSolution, ODEBlock, trajectory_from_solution

__all__ = ["ContinuousDepthClassifier", "Prediction"]


@dataclass
class Prediction:
    """Result of :meth:`ContinuousDepthClassifier.predict` (per sample): `logits` at the
    stopping time, `tau` the stopping time, `nfe` field evaluations, `halted` whether the rule
    (not the horizon) ended the sample, and the solver's `solution`."""

    logits: Tensor
    tau: Tensor
    nfe: Tensor
    halted: Tensor
    solution: FlowSolution


class ContinuousDepthClassifier(nn.Module):
    """logits = head(h(tau)), dh/dt = f(t, h), h(0) = embed(x).

    **Arguments:**

    - `embed`: maps inputs to initial states `(batch, *state)`.
    - `flow`: an :class:`~odedepth.flows.ODEBlock`.
    - `head`: maps states to logits `(batch, n_classes)`.
    - `checkpoints`: number of evenly spaced checkpoints in (0, T] (plus t = 0) of the trajectory
      that :meth:`forward` returns.

    **Returns:** `model(x)` -> `(logits at T, DepthTrajectory at the checkpoints)`.
    """

    def __init__(self, embed: nn.Module, flow: ODEBlock, head: nn.Module, checkpoints: int = 8):
        super().__init__()
        if not isinstance(flow, ODEBlock):
            raise TypeError(f"ContinuousDepthClassifier: flow must be an ODEBlock, got "
                            f"{type(flow).__name__}")
        if int(checkpoints) != checkpoints or checkpoints < 1:
            raise ValueError(f"ContinuousDepthClassifier: checkpoints must be a positive "
                             f"integer, got {checkpoints}")
        self.embed, self.flow, self.head = embed, flow, head
        self.checkpoints = int(checkpoints)

    def checkpoint_times(self, t1: float | None = None, n: int | None = None, *,
                         device=None, dtype=None) -> Tensor:
        """`(n + 1,)` times 0, T/n, ..., T."""
        t1 = self.flow.t1 if t1 is None else float(t1)
        n = self.checkpoints if n is None else int(n)
        return torch.linspace(0.0, t1, n + 1, device=device,
                              dtype=dtype or torch.get_default_dtype())

    def forward(self, x: Tensor, *, t1: float | None = None, checkpoints: int | None = None,
                **solve_kw) -> tuple[Tensor, DepthTrajectory]:
        h0 = self.embed(x)
        te = self.checkpoint_times(t1, checkpoints, device=h0.device, dtype=h0.dtype)
        sol = self.flow.solve(h0, t1=te[-1], t_eval=te, count_checkpoint_nfe=True, **solve_kw)
        traj = trajectory_from_solution(sol, self.head)
        return traj.outputs[:, -1], traj

    def predict(self, x: Tensor, rule=None, *, t1: float | None = None, **solve_kw) -> Prediction:
        """Per-sample halting: each sample stops at the first zero crossing of `rule`'s score
        (a terminal event of the solver, finished samples leave the batch), else at the horizon.
        """
        h0 = self.embed(x)
        sol = self.flow.solve(h0, t1=t1, stop=rule, head=self.head, **solve_kw)
        return Prediction(logits=self.head(sol.h), tau=sol.t, nfe=sol.nfe, halted=sol.halted,
                          solution=sol)

    @torch.no_grad()
    def trajectory(self, x: Tensor, n: int = 20, t1: float | None = None,
                   **solve_kw) -> DepthTrajectory:
        """The trajectory at n + 1 evenly spaced checkpoints, without gradients."""
        return self.forward(x, t1=t1, checkpoints=n, **solve_kw)[1]
