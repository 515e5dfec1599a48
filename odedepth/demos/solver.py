"""Solver demo: a neural ODE integrated by :mod:`solvers.ode` and by torchdiffeq side by side.

``odedepth solver-demo`` (see :mod:`odedepth.cli`) calls :func:`run`. A random tanh MLP vector
field (state 8, hidden 64, with time input) is integrated over t in [0, 2] for a batch of 128
initial states, in float64, over a sweep of tolerances, by

- our ``dopri5`` and ``tsit5`` (per-sample step control), and
- torchdiffeq's ``dopri5`` (one step size for the whole batch),

and each run is scored against a scipy ``DOP853`` reference at rtol = atol = 1e-12. Printed per
run: tolerance, NFE (batch-equivalent: per-sample evaluations summed and divided by the batch,
since our solver evaluates only the samples that still need it; torchdiffeq evaluates the whole
batch every time), maximum error and the median time of a solve, measured as this process's CPU
time (``time.process_time``, one torch thread) because wall time on a machine shared with other
jobs is dominated by them. The work-precision diagram (error against time and against NFE) is
written to ``out/work_precision.png`` and the table to ``out/work_precision.csv``.

References: Hairer, Norsett & Wanner, *Solving Ordinary Differential Equations I* (work-precision
diagrams, Sec. II.10); diffrax's benchmarking advice (same precision, tight reference, time
after warm-up).
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from solvers import ode
from solvers.ode.compat import solve_with_torchdiffeq

from .depth import _write_atomic

__all__ = ["NeuralField", "run"]

DIM, HIDDEN, BATCH, T1 = 8, 64, 128, 2.0


class NeuralField(nn.Module):
    """f(t, y) = W2 tanh(W1 [y, t] + b1) + b2: a small time-dependent neural vector field.

    **Arguments:**

    - `dim`: state size; `hidden`: hidden width; `seed`: initialisation seed;
      `dtype`: parameter dtype.
    """

    def __init__(self, dim: int = DIM, hidden: int = HIDDEN, seed: int = 0,
                 dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # Gain 1.5 on the first layer: a field with visible nonlinearity but no stiffness.
        self.w1 = nn.Parameter(1.5 * torch.randn(hidden, dim + 1, generator=g, dtype=dtype)
                               / (dim + 1) ** 0.5)
        self.b1 = nn.Parameter(0.1 * torch.randn(hidden, generator=g, dtype=dtype))
        self.w2 = nn.Parameter(torch.randn(dim, hidden, generator=g, dtype=dtype) / hidden**0.5)
        self.b2 = nn.Parameter(0.1 * torch.randn(dim, generator=g, dtype=dtype))

    def forward(self, t, y):
        z = torch.cat([y, t.reshape(-1, 1).to(y.dtype).expand(y.shape[0], 1)], 1)
        return torch.tanh(z @ self.w1.T + self.b1) @ self.w2.T + self.b2

    def numpy(self):
        """The same field for scipy on the flattened batch, ``f(t, y_flat)``."""
        w1, b1, w2, b2 = (p.detach().cpu().double().numpy() for p in
                          (self.w1, self.b1, self.w2, self.b2))
        dim = w2.shape[0]

        def f(t, y):
            y = y.reshape(-1, dim)
            z = np.concatenate([y, np.full((y.shape[0], 1), t)], 1)
            return (np.tanh(z @ w1.T + b1) @ w2.T + b2).reshape(-1)

        return f


def _reference(field, y0, t1):
    import scipy.integrate

    sol = scipy.integrate.solve_ivp(field.numpy(), (0.0, t1), y0.numpy().reshape(-1),
                                    method="DOP853", rtol=1e-12, atol=1e-12)
    if not sol.success:  # pragma: no cover
        raise RuntimeError(f"scipy reference failed: {sol.message}")
    return sol.y[:, -1].reshape(y0.shape)


def _time(fn, repeats):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        times.append(time.process_time() - t0)
    return statistics.median(times), out


def run(out="outputs/solver_demo", quick: bool = False, seed: int = 0):
    """Run the tolerance sweep, print the table and write the work-precision plot.

    **Arguments:**

    - `out`: output folder (created if missing).
    - `quick`: 3 tolerances, batch 32, 1 repeat (a smoke run of a few seconds).
    - `seed`: seed of the field and the initial states.

    **Returns:** list of dicts, one per (solver, tolerance): ``solver``, ``tol``, ``nfe``,
    ``err``, ``cpu_s`` (median CPU time of one solve).

    **Raises:** ``ValueError`` if `out` exists and is not a directory.
    """
    torch.set_num_threads(1)  # CPU time = work done, comparable across solvers
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"solver demo: output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    tols = [1e-4, 1e-6, 1e-8] if quick else [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10]
    batch = 32 if quick else BATCH
    repeats = 1 if quick else 5
    field = NeuralField(seed=seed)
    for p in field.parameters():
        p.requires_grad_(False)
    y0 = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(seed + 1),
                     dtype=torch.float64)
    ref = _reference(field, y0, T1)

    def ours(method, tol):
        def go():
            with torch.no_grad():
                sol = ode.solve(field, y0, (0.0, T1), method=method, rtol=tol, atol=tol,
                                max_steps=100_000)
            return sol.y, float(sol.stats["nfe"].double().sum()) / batch

        return go

    def theirs(tol):
        def go():
            with torch.no_grad():
                sol = solve_with_torchdiffeq(field, y0, (0.0, T1), method="dopri5", rtol=tol,
                                             atol=tol, max_steps=100_000)
            return sol.y, float(sol.stats["nfe"][0])

        return go

    solvers = {"solvers.ode dopri5": lambda tol: ours("dopri5", tol),
               "solvers.ode tsit5": lambda tol: ours("tsit5", tol),
               "torchdiffeq dopri5": theirs}
    rows = []
    print(f"# neural ODE: tanh MLP field {DIM}-{HIDDEN}-{DIM} (+t), batch {batch}, t in [0, {T1:g}],"
          f" float64; error = max |y(T) - scipy DOP853 (1e-12)|")
    print(f"{'solver':<20} {'rtol=atol':>9} {'NFE':>8} {'max err':>9} {'cpu ms':>9}")
    for name, make in solvers.items():
        for tol in tols:
            wall, (y, nfe) = _time(make(tol), repeats)
            err = float(np.abs(y.numpy() - ref).max())
            rows.append(dict(solver=name, tol=tol, nfe=nfe, err=err, cpu_s=wall))
            print(f"{name:<20} {tol:9.0e} {nfe:8.1f} {err:9.2e} {wall * 1e3:9.2f}")
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(str(out / "work_precision.csv"), buf.getvalue())  # never half-written
    _plot(rows, out / "work_precision.png", batch)
    print(f"wrote {out / 'work_precision.png'} and {out / 'work_precision.csv'}")
    return rows


def _plot(rows, path, batch):
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["solver"] for r in rows):
        sub = [r for r in rows if r["solver"] == name]
        err = [max(r["err"], 1e-16) for r in sub]
        axes[0].loglog([r["cpu_s"] * 1e3 for r in sub], err, "o-", label=name)
        axes[1].loglog([r["nfe"] for r in sub], err, "o-", label=name)
    axes[0].set_xlabel("CPU time of one solve [ms] (median)")
    axes[1].set_xlabel("NFE (batch-equivalent)")
    for ax in axes:
        ax.set_ylabel("max error vs scipy DOP853")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Work-precision: neural ODE, batch {batch}")
    fig.tight_layout()
    save_figure(fig, path)  # atomic: an earlier figure is replaced whole or kept
    plt.close(fig)
