"""Heterogeneous stopping: a batch whose samples stop at very different times.

Problem (issue 2): batch 1024, neural vector field h' = MLP(h) + Omega h (MLP 32 -> 64 -> 32,
tanh; Omega a fixed skew-symmetric matrix with frequencies up to ~10, so that the step size
stays bounded and the cost of a sample grows linearly with its horizon: ~100 steps to T = 4),
plus a per-sample stopping time tau_i uniform in [0.1, 1] T carried as a constant state
component; a terminal event g(t, y) = t - tau stops each sample at its own time. dopri5,
rtol 1e-5, atol 1e-7, float32.

Compared in one run:

- `solvers.ode event`: the event solve (each sample leaves the active set at its event);
- `solvers.ode horizons`: the same with per-sample horizons t1 = tau instead of an event;
- `ideal`: the time of the batch with every horizon = T, scaled by mean(tau) / T (what the batch
  would cost if each sample paid only for its own horizon);
- torchdiffeq, which has one time axis and must carry the whole batch to T;
- torchode with per-sample t_end = tau (no events, but per-sample horizons).

Target (issue 2): event solve within 1.3x of the ideal.

Usage::

    python benchmarks/bench_ode_heterogeneous.py [--quick] [--batch 1024] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ode_overhead import (  # noqa: E402
    add_run_arguments,
    interleaved_medians,
    make_field,
    run_torchdiffeq,
    setup_run,
)

from solvers import ode  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 64, T = 1, 1 repeat")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--horizon", type=float, default=4.0, help="T")
    parser.add_argument("--repeats", type=int, default=5)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    run = setup_run(args)
    if run is None:
        return {}
    device, clock = run
    batch = 64 if args.quick else args.batch
    repeats = 1 if args.quick else args.repeats
    T = 1.0 if args.quick else args.horizon
    rtol, atol = 1e-5, 1e-7
    net = make_field(device=device)
    gen = torch.Generator().manual_seed(0)
    h0 = torch.randn(batch, 32, generator=gen)
    tau = T * (0.1 + 0.9 * torch.rand(batch, generator=gen))
    y0 = torch.cat([h0, tau[:, None]], 1).to(device)
    tau = tau.to(device)

    u = torch.randn(32, 32, generator=torch.Generator().manual_seed(3))
    omega = (8.0 * (u - u.T) / (2 * 32**0.5)).to(device)

    def f(t, y):
        h = y[:, :-1]
        # The stopping time rides along as a constant component: the field stays batch-
        # elementwise, so compaction may drop finished samples.
        return torch.cat([net(t, h) + h @ omega.T, torch.zeros_like(y[:, -1:])], 1)

    event = ode.Event(lambda t, y: t - y[:, -1], direction=1, terminal=True)
    kw = dict(method="dopri5", rtol=rtol, atol=atol, max_steps=100_000)

    def ours_event():
        with torch.no_grad():
            return ode.solve(f, y0, (0.0, T), event=event, **kw)

    def ours_horizons():
        with torch.no_grad():
            return ode.solve(f, y0, (0.0, tau), **kw)

    def ours_full():
        with torch.no_grad():
            return ode.solve(f, y0, (0.0, T), **kw)

    # torchdiffeq.odeint itself is timed (f ignores its time argument, so its scalar t is fine)
    tdiffeq, _ = run_torchdiffeq(f, y0, T, rtol, atol)

    runners = {"solvers.ode event": ours_event, "solvers.ode horizons": ours_horizons,
               "solvers.ode all to T": ours_full, "torchdiffeq (to T)": tdiffeq}
    try:
        import torchode as to

        term = to.ODETerm(f)
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term),
                                    to.IntegralController(atol=atol, rtol=rtol, term=term),
                                    max_steps=100_000)
        problem = to.InitialValueProblem(y0=y0, t_start=torch.zeros_like(tau), t_end=tau)

        def tode():
            with torch.no_grad():
                return solver.solve(problem)

        runners["torchode horizons"] = tode
    except ImportError:  # pragma: no cover - optional peer
        print("torchode not installed: skipped")

    res = interleaved_medians(runners, repeats, device)
    sol = res["solvers.ode event"][1]
    assert bool((sol.status == int(ode.Status.EVENT)).all()), "every sample must stop at its event"
    event_err = float((sol.t - tau).abs().max())
    full = res["solvers.ode all to T"][0]
    ideal = full * float(tau.mean()) / T
    print(f"# heterogeneous stopping: MLP 32-64-32 + skew linear field, per-sample stop tau ~ U[0.1, 1] T, "
          f"T = {T:g}, batch {batch}, dopri5, rtol {rtol:g}, atol {atol:g}, float32, {device}, "
          f"median of {repeats}, {clock} clock")
    print(f"# ideal = (all samples to T) x mean(tau) / T = {ideal * 1e3:.1f} ms; "
          f"max |t_event - tau| = {event_err:.1e}")
    print(f"{'solver':<22} {clock + ' ms':>9} {'x ideal':>8} {'speed-up vs torchdiffeq':>24}")
    base = res["torchdiffeq (to T)"][0]
    rows = {"ideal": ideal}
    for name, (wall, _) in res.items():
        rows[name] = wall
        print(f"{name:<22} {wall * 1e3:9.1f} {wall / ideal:8.2f} {base / wall:24.2f}")
    return rows


if __name__ == "__main__":
    main()
