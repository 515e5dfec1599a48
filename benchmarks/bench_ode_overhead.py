"""Loop overhead of solvers.ode against torchdiffeq and torchode, measured in one run.

Problem (issue 2): MLP vector field 32 -> 64 -> 32 with tanh, batch 256, dopri5, rtol 1e-6,
atol 1e-8, t in [0, 1], float32 on CPU (``--device cuda`` runs the same on a GPU).

Printed per solver: NFE, median wall time over the repeats, maximum error against a scipy DOP853
reference (float64, rtol = atol = 1e-12), and the overhead factor

    overhead = wall / (NFE x t_f),

where t_f is the median time of one call of the field on the full batch. NFE is counted in
*batch-equivalent* evaluations: our solver controls each sample's steps separately and, with
compaction, calls the field on the active samples only, so its NFE is sum over samples of the
per-sample evaluation counts divided by the batch size. torchdiffeq and torchode always evaluate
the full batch, so their NFE is the number of calls.

Targets (issue 2): overhead <= 1.5 and wall time >= 3x faster than torchdiffeq at equal or better
error.

Usage::

    python benchmarks/bench_ode_overhead.py [--quick] [--device cuda] [--batch 256] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers import ode  # noqa: E402
from solvers.ode.compat import solve_with_torchdiffeq  # noqa: E402


def make_field(dim=32, hidden=64, seed=0, device="cpu", dtype=torch.float32):
    """The benchmark field f(t, y) = W2 tanh(W1 y + b1) + b2 (time-independent)."""
    with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
    net = net.to(device=device, dtype=dtype)
    for p in net.parameters():
        p.requires_grad_(False)

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    return Field()


def numpy_field(field):
    w1, b1, w2, b2 = (p.detach().cpu().double().numpy() for p in field.net.parameters())

    def f(t, y, dim=w1.shape[1]):
        y = y.reshape(-1, dim)
        return (np.tanh(y @ w1.T + b1) @ w2.T + b2).reshape(-1)

    return f


def scipy_reference(field, y0, t1, tol=1e-12):
    """DOP853 reference at t1; the batch is one big system (the field is per-sample)."""
    import scipy.integrate

    y0n = y0.detach().cpu().double().numpy()
    sol = scipy.integrate.solve_ivp(numpy_field(field), (0.0, float(t1)), y0n.reshape(-1),
                                    method="DOP853", rtol=tol, atol=tol)
    assert sol.success, sol.message
    return sol.y[:, -1].reshape(y0n.shape)


# The clock used by every timing of a run. "wall" (time.perf_counter) is what a user waits;
# "cpu" (time.process_time, meaningful with --threads 1 on CPU) is this process's own CPU time,
# which stays stable on a machine shared with other jobs.
CLOCK = {"fn": time.perf_counter}


def set_clock(name: str, device) -> str:
    if name == "cpu" and torch.device(device).type == "cuda":
        raise ValueError("--clock cpu measures host CPU time only; use --clock wall with CUDA")
    CLOCK["fn"] = time.process_time if name == "cpu" else time.perf_counter
    return name


def add_run_arguments(parser):
    """The flags every ODE benchmark shares: --device, --threads, --clock."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this process's CPU time (robust on a shared machine)")


def setup_run(args):
    """Apply the shared flags; returns `(device, clock)`, or None when CUDA was asked for but is
    not available (the benchmark then skips with a message)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device available: skipping (--device cuda)")
        return None
    return device, set_clock(args.clock, device)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn, repeats, device):
    times = []
    out = None
    clock = CLOCK["fn"]
    for _ in range(repeats):
        sync(device)
        t0 = clock()
        out = fn()
        sync(device)
        times.append(clock() - t0)
    return statistics.median(times), out


def interleaved_medians(runners, repeats, device):
    """Median wall time of each runner, timed round-robin so that load from other processes on a
    shared machine hits all solvers alike. Returns ``{name: (median_seconds, last_output)}``."""
    for fn in runners.values():
        fn()  # warm-up
    times = {name: [] for name in runners}
    outs = {}
    clock = CLOCK["fn"]
    for _ in range(repeats):
        for name, fn in runners.items():
            sync(device)
            t0 = clock()
            outs[name] = fn()
            sync(device)
            times[name].append(clock() - t0)
    return {name: (statistics.median(times[name]), outs[name]) for name in runners}


def field_call_time(field, y0, device, repeats=200):
    t = torch.zeros(y0.shape[0], dtype=y0.dtype, device=y0.device)
    with torch.no_grad():
        for _ in range(10):
            field(t, y0)
        return median_time(lambda: field(t, y0), repeats, device)[0]


def run_ours(field, y0, t1, rtol, atol, method="dopri5", **kw):
    with torch.no_grad():
        sol = ode.solve(field, y0, (0.0, t1), method=method, rtol=rtol, atol=atol, **kw)
    nfe = float(sol.stats["nfe"].double().sum()) / y0.shape[0]
    return sol.y, nfe, sol


def run_torchdiffeq(field, y0, t1, rtol, atol, method="dopri5"):
    with torch.no_grad():
        sol = solve_with_torchdiffeq(field, y0, (0.0, t1), method=method, rtol=rtol, atol=atol)
    return sol.y, float(sol.stats["nfe"][0]), sol


def run_torchode(field, y0, t1, rtol, atol, t_end=None):
    import torchode as to

    batch = y0.shape[0]
    term = to.ODETerm(field)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term),
                                to.IntegralController(atol=atol, rtol=rtol, term=term))
    t_start = torch.zeros(batch, dtype=y0.dtype, device=y0.device)
    t_end = torch.full_like(t_start, float(t1)) if t_end is None else t_end
    problem = to.InitialValueProblem(y0=y0, t_start=t_start, t_end=t_end)
    with torch.no_grad():
        sol = solver.solve(problem)
    # torchode evaluates the whole batch on every call: per-sample n_f_evals are all equal to
    # the number of calls of the field.
    nfe = float(sol.stats["n_f_evals"].max())
    return sol.ys[:, -1], nfe, sol


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 64, 2 repeats, looser reference")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=21)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    run = setup_run(args)
    if run is None:
        return {}
    device, clock = run
    repeats = 2 if args.quick else args.repeats
    batch = 64 if args.quick else args.batch
    rtol, atol, t1 = 1e-6, 1e-8, 1.0
    field = make_field(device=device)
    y0 = torch.randn(batch, 32, generator=torch.Generator().manual_seed(1)).to(device)
    ref = scipy_reference(field, y0, t1, tol=1e-10 if args.quick else 1e-12)
    t_f = field_call_time(field, y0, device, repeats=50 if args.quick else 300)

    runners = {
        "solvers.ode": lambda: run_ours(field, y0, t1, rtol, atol),
        "torchdiffeq": lambda: run_torchdiffeq(field, y0, t1, rtol, atol),
    }
    try:
        import torchode  # noqa: F401

        runners["torchode"] = lambda: run_torchode(field, y0, t1, rtol, atol)
    except ImportError:  # pragma: no cover - optional peer
        print("torchode not installed: skipped")
    rows = {}
    for name, (wall, (y, nfe, _)) in interleaved_medians(runners, repeats, device).items():
        err = float(np.abs(y.detach().cpu().double().numpy() - ref).max())
        rows[name] = dict(nfe=nfe, wall=wall, err=err, overhead=wall / (nfe * t_f))
    base = rows["torchdiffeq"]["wall"]
    print(f"# loop overhead: MLP 32-64-32 tanh, batch {batch}, dopri5, rtol {rtol}, "
          f"atol {atol}, t in [0, {t1}], float32, {device}, {torch.get_num_threads()} thread(s), "
          f"median of {repeats}, {clock} clock")
    print(f"# one field call on the full batch: t_f = {t_f * 1e6:.1f} us")
    print(f"{'solver':<13} {'NFE':>7} {clock + ' ms':>9} {'max err':>9} {'overhead':>9} "
          f"{'speed-up vs torchdiffeq':>24}")
    for name, r in rows.items():
        print(f"{name:<13} {r['nfe']:7.1f} {r['wall'] * 1e3:9.2f} {r['err']:9.2e} "
              f"{r['overhead']:9.2f} {base / r['wall']:24.2f}")
    return rows


if __name__ == "__main__":
    main()
