"""Figures for depth-stopping experiments (matplotlib, Agg backend: no display needed).

- :func:`plot_stopping_boundary`: score trajectories in (depth, score) coordinates, the boundary
  score = 0 and where each sample stopped;
- :func:`plot_stopping_times`: histograms of the stopping times of several rules;
- :func:`plot_accuracy_vs_depth`: accuracy against mean horizon and against mean NFE, rules as
  points and (optionally) the fixed-horizon curve.

Every function writes its figure atomically (temporary file, fsync, then rename; the mode of a
replaced file is kept, else ``0o666 & ~umask``) when given a `path`, and returns the figure.
Empty input (no samples, no depths, or no stopping times and no `horizon`) raises `ValueError`
naming the function and the empty argument rather than drawing an empty figure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_stopping_boundary", "plot_stopping_times", "plot_accuracy_vs_depth",
           "save_figure"]


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def save_figure(fig, path) -> str:
    """Save `fig` to `path` atomically (the suffix picks the format, `.png` when there is none);
    returns the path.

    Written by :func:`odedepth.checkpoint.atomic_write`: a temporary file in the same folder,
    fsynced and renamed over `path`; the file keeps the mode of the one it replaces, else gets
    ``0o666 & ~umask``.

    **Raises:** `ValueError` if the folder does not exist or matplotlib does not know the format.
    """
    from .checkpoint import atomic_write

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"save_figure: folder {folder!r} does not exist")
    suffix = os.path.splitext(path)[1] or ".png"
    atomic_write(path, lambda f: fig.savefig(f, format=suffix[1:], dpi=120, bbox_inches="tight"),
                 suffix=suffix, caller="save_figure")
    return path


def plot_stopping_boundary(depths, scores, tau=None, *, path=None, title="stopping boundary",
                           max_paths: int = 40, xlabel="depth t"):
    """Score trajectories in (depth, score) coordinates with the boundary score = 0.

    **Arguments:**

    - `depths`: `(n,)` depths; `scores`: `(batch, n)` the rule's signed score along each
      sample's trajectory (stop where >= 0).
    - `tau`: optional `(batch,)` stopping times, marked on the boundary.
    - `path`: where to save; `max_paths`: number of samples drawn.

    **Returns:** the matplotlib figure.
    """
    d, s = _np(depths), _np(scores)
    if s.ndim != 2 or s.shape[1] != d.shape[0]:
        raise ValueError(f"plot_stopping_boundary: scores must be (batch, {d.shape[0]}), got "
                         f"{s.shape}")
    if s.size == 0:
        raise ValueError(f"plot_stopping_boundary: scores is empty (shape {s.shape}); need at "
                         "least one sample and one depth")
    fig, ax = plt.subplots(figsize=(6, 4))
    m = min(max_paths, s.shape[0])
    ax.plot(d, s[:m].T, color="tab:blue", alpha=0.35, lw=1)
    ax.axhline(0.0, color="k", lw=1.5, label="boundary (score = 0)")
    ax.axhspan(0, max(1e-9, np.nanmax(s[:m])), color="tab:red", alpha=0.06, label="stop region")
    if tau is not None:
        t = _np(tau)[:m]
        ax.plot(t, np.zeros_like(t), "v", color="tab:red", ms=5, label="stopping time")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_stopping_times(taus: Mapping[str, Sequence[float]], *, horizon=None, path=None,
                        bins: int = 20):
    """Overlaid histograms of stopping times, one per rule (`{name: (batch,) times}`).

    The bins span `[0, horizon]`, or `[0, largest time]` without `horizon`. A rule with no
    times draws nothing; without `horizon` at least one rule needs times.

    **Raises:** `ValueError` for an empty mapping, or when every rule's times are empty and no
    `horizon` is given (the range is then unknown).
    """
    if not taus:
        raise ValueError("plot_stopping_times: no stopping times given")
    arrays = {name: _np(v).reshape(-1) for name, v in taus.items()}
    if horizon is None:
        filled = [a for a in arrays.values() if a.size]
        if not filled:
            raise ValueError(f"plot_stopping_times: the stopping times of every rule "
                             f"({', '.join(map(repr, arrays))}) are empty and no horizon was "
                             "given; pass horizon= to draw an empty figure")
        hi = max(float(np.max(a)) for a in filled)
    else:
        hi = horizon
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.linspace(0.0, max(hi, 1e-9), bins + 1)
    for name, v in arrays.items():
        ax.hist(v, bins=edges, alpha=0.45, label=name)
    ax.set_xlabel("stopping time tau")
    ax.set_ylabel("samples")
    ax.set_title("stopping times")
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_accuracy_vs_depth(results: Mapping[str, Mapping[str, float]], *, curve=None,
                           path=None):
    """Accuracy against mean horizon (left) and against mean NFE (right).

    **Arguments:**

    - `results`: `{rule: {"accuracy", "mean_tau", "mean_nfe"}}` (one point each).
    - `curve`: optional `{"tau": (m,), "nfe": (m,), "accuracy": (m,)}`, e.g. the fixed-horizon
      model stopped at m horizons, drawn as a line.
    """
    if not results:
        raise ValueError("plot_accuracy_vs_depth: no results given")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "mean_tau", "mean horizon tau"),
                           (axes[1], "mean_nfe", "mean NFE")):
        if curve is not None:
            ckey = "tau" if key == "mean_tau" else "nfe"
            ax.plot(_np(curve[ckey]), 100 * _np(curve["accuracy"]), "-", color="0.6",
                    label="fixed horizon")
        markers = "osD^vP*Xh"
        for i, (name, r) in enumerate(results.items()):
            ax.plot(r[key], 100 * r["accuracy"], markers[i % len(markers)], label=name,
                    alpha=0.85)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    if path is not None:
        save_figure(fig, path)
    return fig
