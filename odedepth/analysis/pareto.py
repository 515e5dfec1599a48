"""Accuracy against compute: Pareto frontiers over static configurations and early-exit thresholds.

A point is (cost, accuracy); it is on the frontier if no other point is at most as costly and at
least as accurate with one of the two strict. Static configurations (the 2^S gate settings of a
gated network) give one point each; an early-exit rule swept over thresholds gives a curve whose
cost is the mean per-sample cost of the depths where samples stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..trajectory import DepthTrajectory

__all__ = ["ParetoPoint", "pareto_frontier", "configuration_sweep", "early_exit_sweep",
           "plot_pareto"]


@dataclass
class ParetoPoint:
    """One operating point: `label` (e.g. a configuration string or a threshold), `cost`
    (multiply-adds or any compute measure) and `accuracy`."""

    label: str
    cost: float
    accuracy: float


def pareto_frontier(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """Non-dominated points (lower cost and higher accuracy are better), sorted by cost.

    **Arguments:**

    - `points`: candidate operating points.

    **Returns:** the frontier, increasing in cost and strictly increasing in accuracy.
    """
    pts = list(points)
    for p in pts:
        if not isinstance(p, ParetoPoint):
            raise TypeError(f"pareto_frontier: expected ParetoPoint items, got {type(p).__name__}")
        if not (torch.isfinite(torch.tensor(p.cost)) and torch.isfinite(torch.tensor(p.accuracy))):
            raise ValueError(f"pareto_frontier: point {p.label!r} has a non-finite cost or accuracy")
    # Sort by cost, ties broken by higher accuracy first; keep a point only if it beats all cheaper.
    pts.sort(key=lambda p: (p.cost, -p.accuracy))
    frontier: list[ParetoPoint] = []
    best = -float("inf")
    for p in pts:
        if p.accuracy > best:
            frontier.append(p)
            best = p.accuracy
    return frontier


def configuration_sweep(
    configs: Iterable[str],
    accuracy_fn: Callable[[str], float],
    cost_fn: Callable[[str], float],
) -> list[ParetoPoint]:
    """Evaluate every static configuration.

    **Arguments:**

    - `configs`: configuration labels (e.g. `"TTFF"`).
    - `accuracy_fn`: label -> accuracy (e.g. configure the model, run the validation set).
    - `cost_fn`: label -> cost (e.g. `count_macs` of the configured model).

    **Returns:** one :class:`ParetoPoint` per configuration (use :func:`pareto_frontier` on it).
    """
    return [ParetoPoint(str(c), float(cost_fn(c)), float(accuracy_fn(c))) for c in configs]


def early_exit_sweep(
    traj: DepthTrajectory,
    target: Tensor,
    rule_factory: Callable[[float], object],
    thresholds: Sequence[float],
    exit_costs: Sequence[float] | Tensor | None = None,
) -> list[ParetoPoint]:
    """Accuracy and mean cost of an early-exit rule at each threshold, from one full trajectory.

    Every sample is run through all exits once; a rule's stop index then selects, per sample, the
    prediction and the cumulative cost at the exit where it would have stopped (what a compacting
    early-exit inference would compute, without rerunning the network per threshold).

    **Arguments:**

    - `traj`: trajectory with logits at every exit (`outputs` of shape `(batch, n, classes)`).
    - `target`: `(batch,)` labels.
    - `rule_factory`: threshold -> a stopping rule with `stop_index(traj)` (e.g.
      `odedepth.stopping.MaxProbability`).
    - `thresholds`: the thresholds to sweep.
    - `exit_costs`: `(n,)` cumulative cost at each exit; defaults to `traj.cost_grid()`.

    **Returns:** a list of :class:`ParetoPoint` labelled by threshold.
    """
    if not isinstance(traj, DepthTrajectory):
        raise TypeError(f"early_exit_sweep: traj must be a DepthTrajectory, got {type(traj).__name__}")
    if target.shape != (traj.batch_size,):
        raise ValueError(f"early_exit_sweep: target must have shape ({traj.batch_size},), got "
                         f"{tuple(target.shape)}")
    if exit_costs is None:
        costs = traj.cost_grid()
    else:
        c = torch.as_tensor(exit_costs, dtype=torch.float64, device=traj.outputs.device)
        if c.shape != (traj.n_depths,):
            raise ValueError(f"early_exit_sweep: exit_costs must have shape ({traj.n_depths},), "
                             f"got {tuple(c.shape)}")
        costs = c.expand(traj.batch_size, traj.n_depths)
    pts = []
    for th in thresholds:
        idx = rule_factory(th).stop_index(traj)
        pred = traj.outputs_at(idx).argmax(dim=-1)
        acc = (pred == target).double().mean().item()
        cost = costs.gather(1, idx[:, None]).double().mean().item()
        pts.append(ParetoPoint(f"{th:g}", cost, acc))
    return pts


def plot_pareto(series: dict[str, Sequence[ParetoPoint]], ax=None, *, frontier: bool = True,
                xlabel: str = "multiply-adds", ylabel: str = "accuracy", annotate: bool = True):
    """Plot accuracy against cost for several series of points, with their frontiers.

    **Arguments:**

    - `series`: name -> points (e.g. `{"static configs": ..., "max-prob exit": ...}`).
    - `ax`: a matplotlib axis (a new figure if `None`).
    - `frontier`: draw each series' Pareto frontier as a step line.
    - `annotate`: write point labels next to the markers.

    **Returns:** the matplotlib axis.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    for name, pts in series.items():
        pts = list(pts)
        sc = ax.scatter([p.cost for p in pts], [p.accuracy for p in pts], label=name, s=18)
        if annotate:
            for p in pts:
                ax.annotate(p.label, (p.cost, p.accuracy), fontsize=6, alpha=0.7)
        if frontier and pts:
            f = pareto_frontier(pts)
            ax.step([p.cost for p in f], [p.accuracy for p in f], where="post",
                    color=sc.get_facecolor()[0], alpha=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
