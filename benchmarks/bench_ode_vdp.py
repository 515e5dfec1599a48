"""Batch coupling on Van der Pol (torchode paper setup): steps of per-sample control vs one
shared step size.

Problem: x'' = mu (1 - x^2) x' - x with mu = 25, batch 256, initial points spread evenly (in
time) around the limit cycle, integrated over one period, atol = rtol = 1e-5, dopri5, float32
(Lienen & Guennemann 2022, "torchode: A parallel ODE solver for PyTorch", Sec. 4 and
results/vdp.py of martenlienen/torchode-paper; their step-count experiment uses mu = 25).

Because every start point lies on the limit cycle and the horizon is one period, the exact
final state is the initial state: the error column is |y(T) - y(0)| (the period is computed by
scipy to ~1e-10).

Printed per solver: mean steps per sample (what each sample paid), max steps (loop
iterations), batch-equivalent NFE (sum of per-sample evaluations / batch; torchdiffeq and
torchode evaluate the whole batch every time), median wall time, max error. Target (issue 2):
our mean steps <= 1/3 of torchdiffeq's.

Usage::

    python benchmarks/bench_ode_vdp.py [--quick] [--mu 25] [--batch 256] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ode_overhead import (  # noqa: E402
    add_run_arguments,
    run_torchdiffeq,
    setup_run,
    timed_runs,
)

from solvers import ode  # noqa: E402


def limit_cycle(mu: float, n: int, tol: float = 1e-11):
    """`n` points evenly spaced in time on the Van der Pol limit cycle, and its period."""
    import scipy.integrate

    def f(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    # Period approximation (3 - 2 ln 2) mu + 2 pi mu^(-1/3) (torchode paper) to size the
    # transient; then upward zero crossings of x locate the period precisely.
    approx = (3 - 2 * math.log(2)) * mu + 2 * math.pi * mu ** (-1 / 3)
    settle = scipy.integrate.solve_ivp(f, (0, 4 * approx), [2.0, 0.0], method="LSODA",
                                       rtol=tol, atol=tol)
    start = settle.y[:, -1]

    def crossing(t, y):
        return y[0]

    crossing.direction = 1
    cyc = scipy.integrate.solve_ivp(f, (0, 2.5 * approx), start, method="LSODA", rtol=tol,
                                    atol=tol, events=crossing, dense_output=True)
    t_up = cyc.t_events[0]
    period = float(t_up[1] - t_up[0])
    times = t_up[0] + period * np.arange(n) / n
    points = np.stack([cyc.sol(t) for t in times])
    return points, period


def vdp_field(mu):
    def f(t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], 1)

    return f


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 16, tolerance 1e-4, 1 repeat")
    parser.add_argument("--mu", type=float, default=25.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=3)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    run = setup_run(args)
    if run is None:
        return {}
    device, clock = run
    batch = 16 if args.quick else args.batch
    repeats = 1 if args.quick else args.repeats
    points, period = limit_cycle(args.mu, batch, tol=1e-8 if args.quick else 1e-11)
    y0 = torch.tensor(points, dtype=torch.float32, device=device)
    f = vdp_field(args.mu)
    tol = 1e-4 if args.quick else args.tol

    # (run, extract) pairs: only the solve is timed (see bench_ode_overhead.run_ours)
    def ours():
        with torch.no_grad():
            return ode.solve(f, y0, (0.0, period), method="dopri5", rtol=tol, atol=tol,
                             max_steps=100_000)

    def ours_stats(sol):
        return sol.y, sol.stats["n_steps"].double(), sol.stats["nfe"].double().sum() / batch

    # torchdiffeq.odeint itself is timed; its step counts come from one counted run
    td_run, td_extract = run_torchdiffeq(f, y0, period, tol, tol, max_steps=100_000)

    def td_stats(y):
        y, _, sol = td_extract(y)
        return y, sol.stats["n_steps"].double(), sol.stats["nfe"][0].double()

    runners = {"solvers.ode": (ours, ours_stats), "torchdiffeq": (td_run, td_stats)}
    try:
        import torchode as to

        term = to.ODETerm(f)
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term),
                                    to.IntegralController(atol=tol, rtol=tol, term=term),
                                    max_steps=100_000)
        t_start = torch.zeros(batch, device=device)
        problem = to.InitialValueProblem(y0=y0, t_start=t_start,
                                         t_end=torch.full_like(t_start, period))

        def tode():
            with torch.no_grad():
                return solver.solve(problem)

        def tode_stats(sol):
            return (sol.ys[:, -1], sol.stats["n_steps"].double(),
                    sol.stats["n_f_evals"].double().max())

        runners["torchode"] = (tode, tode_stats)
    except ImportError:  # pragma: no cover - optional peer
        print("torchode not installed: skipped")

    res = timed_runs(runners, repeats, device)
    print(f"# Van der Pol mu = {args.mu:g}, batch {batch}, one period T = {period:.4f}, dopri5, "
          f"atol = rtol = {tol:g}, float32, {device}, median of {repeats}, {clock} clock")
    print(f"{'solver':<13} {'mean steps':>10} {'max steps':>9} {'NFE':>8} {clock + ' s':>8} "
          f"{'max err':>9} {'mean steps / torchdiffeq':>25}")
    base = float(res["torchdiffeq"][1][1].mean())
    rows = {}
    for name, (wall, (y, steps, nfe)) in res.items():
        err = float((y.double().cpu() - torch.tensor(points)).abs().max())
        rows[name] = dict(mean_steps=float(steps.mean()), max_steps=float(steps.max()),
                          nfe=float(nfe), wall=wall, err=err)
        print(f"{name:<13} {steps.mean():10.1f} {steps.max():9.0f} {float(nfe):8.1f} "
              f"{wall:8.3f} {err:9.2e} {float(steps.mean()) / base:25.3f}")
    return rows


if __name__ == "__main__":
    main()
