"""Benchmark solvers.freeboundary against QuantLib (run side by side, same process, same CPU).

1. Accuracy/time sweep on the American put S = 36, K = 40, r = 0.06, sigma = 0.2, T = 1 (the
   Longstaff–Schwartz test contract): |error| against a binomial reference and median wall and
   CPU time for our four LCP treatments (nt = nx / 4) and QuantLib's FdBlackScholesVanillaEngine
   over a two-dimensional grid sweep (nodes x steps with steps = 1, 2, 4, 8, 16 x nodes, so that
   QuantLib gets its cheapest shape); for each, the smallest CPU time reaching |error| <= 1e-4
   and the ratio ours / QuantLib (CPU time: on a shared machine wall time includes waiting for
   a core, and the two solvers are timed one after the other).
   Reference: QuantLib CRR tree, average of 20,000 and 20,001 steps (the average cancels the
   odd/even oscillation; the remaining O(1/n) error is ~1e-5 here). `--quick` uses 4,000 steps.
2. Throughput: 10,000 American puts with random S, K, r, sigma, T solved as one batch; the error
   is checked on a random subset against QuantLib (CRR average of 4,000/4,001 steps, and the FD
   engine with 800 nodes Richardson-extrapolated in time from 500 and 1,000 steps).

    python benchmarks/bench_freeboundary.py            # full run (several minutes on 1 core)
    python benchmarks/bench_freeboundary.py --quick    # smoke run
    python benchmarks/bench_freeboundary.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from solvers import freeboundary as fb

try:
    import QuantLib as ql
except ImportError:  # pragma: no cover - QuantLib is a dev dependency
    ql = None

TODAY = None


def ql_setup(kind, S, K, r, q, vol, days):
    global TODAY
    TODAY = ql.Date(15, 1, 2025)
    ql.Settings.instance().evaluationDate = TODAY
    dc = ql.Actual365Fixed()
    proc = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(float(S))),
        ql.YieldTermStructureHandle(ql.FlatForward(TODAY, float(q), dc)),
        ql.YieldTermStructureHandle(ql.FlatForward(TODAY, float(r), dc)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(TODAY, ql.NullCalendar(),
                                                           float(vol), dc)))
    payoff = ql.PlainVanillaPayoff(ql.Option.Put if kind == "put" else ql.Option.Call, float(K))
    opt = ql.VanillaOption(payoff, ql.AmericanExercise(TODAY, TODAY + int(days)))
    return opt, proc


def ql_crr_avg(opt, proc, n):
    vals = []
    for steps in (n, n + 1):
        opt.setPricingEngine(ql.BinomialVanillaEngine(proc, "crr", steps))
        vals.append(opt.NPV())
    return 0.5 * sum(vals)


def ql_fd(opt, proc, t_grid, x_grid):
    opt.setPricingEngine(ql.FdBlackScholesVanillaEngine(proc, t_grid, x_grid))
    return opt.NPV()


def timed(fn, repeats, cpu=False):
    """Median wall time (and, with `cpu`, median process CPU time: on a shared machine the
    wall time includes waiting for a core, the CPU time does not)."""
    times, cpus, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if cpu:
        return statistics.median(times), statistics.median(cpus), out
    return statistics.median(times), out


def sweep(args):
    print("== American put S=36 K=40 r=0.06 sigma=0.2 T=1 ==")
    opt, proc = ql_setup("put", 36.0, 40.0, 0.06, 0.0, 0.2, 365)
    n_ref = 4000 if args.quick else 20000
    t0 = time.perf_counter()
    ref = ql_crr_avg(opt, proc, n_ref)
    print(f"reference: QuantLib CRR avg({n_ref},{n_ref + 1}) = {ref:.8f} "
          f"({time.perf_counter() - t0:.1f} s)")
    grids = [(100, 25), (200, 50), (300, 75), (400, 100), (600, 150), (800, 200)]
    if not args.quick:
        grids += [(1200, 300), (1600, 400)]
    else:
        grids = grids[:4]
    rows = []
    problem = fb.black_scholes("put", 40.0, 0.06, 0.2, 1.0)
    for lcp in ("brennan-schwartz", "policy", "psor", "projection"):
        for nx, nt in grids:
            if lcp == "psor" and nx > 400:
                continue  # PSOR's iteration count grows with nx^2 dt: see the docs

            def run(nx=nx, nt=nt, lcp=lcp):
                res = fb.solve(problem, nx=nx, nt=nt, lcp=lcp, record_boundary=False,
                               device=args.device)
                return res.value_at(36.0).item()

            run()  # warm-up
            t, c, v = timed(run, args.repeats, cpu=True)
            rows.append((f"ours/{lcp}", f"{nx}x{nt}", abs(v - ref), t, c))
    # QuantLib: every nodes x steps shape with steps = 1..16 x nodes (its cheapest grid for an
    # error is not on a fixed ratio: e.g. 800 x 6400 beats 1600 x 6400 at 1e-4).
    nodes, mults = ((100, 200, 400), (1, 4)) if args.quick else ((100, 200, 400, 800, 1600),
                                                                (1, 2, 4, 8, 16))
    ql_grids = [(xg * m, xg) for xg in nodes for m in mults if xg * m <= 12800]
    ql_fd(opt, proc, 100, 100)  # warm-up (first call builds caches)
    for tg, xg in ql_grids:
        t, c, v = timed(lambda tg=tg, xg=xg: ql_fd(opt, proc, tg, xg), args.repeats, cpu=True)
        rows.append(("QuantLib FD", f"{xg}x{tg}", abs(v - ref), t, c))
    print(f"{'solver':28s} {'nx x nt':>11s} {'|error|':>10s} {'median s':>10s} {'CPU s':>9s}")
    for name, grid, err, t, c in rows:
        print(f"{name:28s} {grid:>11s} {err:10.2e} {t:10.4f} {c:9.4f}")
    rows = [(name, grid, err, c) for name, grid, err, t, c in rows]  # CPU time from here on
    print("\nsmallest CPU time reaching |error| <= 1e-4:")
    best = {}
    for name, grid, err, t in rows:
        if err <= 1e-4 and (name not in best or t < best[name][1]):
            best[name] = (grid, t)
    q = best.get("QuantLib FD")
    for name in dict.fromkeys(r[0] for r in rows):
        if name in best:
            g, t = best[name]
            ratio = f"  ours/QuantLib = {t / q[1]:.3f}" if q and name != "QuantLib FD" else ""
            print(f"  {name:28s} {g:>11s} {t:8.4f} s{ratio}")
        else:
            print(f"  {name:28s} not reached in this sweep")
    if q is None:
        fastest = min((t for n, g, e, t in rows if n.startswith("ours/brennan") and e <= 1e-4),
                      default=None)
        ql_best = min(rows, key=lambda r: r[2] if r[0] == "QuantLib FD" else 1e9)
        if fastest is not None:
            print(f"  QuantLib's best in the sweep: |error| {ql_best[2]:.2e} at {ql_best[1]} in "
                  f"{ql_best[3]:.3f} s (ratio of times, ours at 1e-4 / QuantLib's best: "
                  f"{fastest / ql_best[3]:.3f})")


def throughput(args):
    n = 1000 if args.quick else 10000
    print(f"\n== Throughput: {n} American puts, random parameters, one batch "
          f"(device {args.device}) ==")
    g = torch.Generator().manual_seed(1234)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    S, K, r, vol = u(70, 130), u(80, 120), u(0.01, 0.08), u(0.1, 0.5)
    days = torch.randint(90, 731, (n,), generator=g)
    T = days.double() / 365.0
    width = torch.clamp(4.0 * vol * T.sqrt() + r * T, min=0.6)  # |ln(S/K)| <= ln(120/70) < 0.6

    def run():
        p = fb.black_scholes("put", K, r, vol, T, width=width)
        res = fb.solve(p, nx=args.nx, nt=args.nt, record_boundary=False,
                       mesh=fb.SinhMesh(0.05), device=args.device)
        out = res.value_at(S.to(res.x.device))
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        return out.cpu()

    run() if args.device != "cpu" else None  # CUDA warm-up
    t, c, vals = timed(run, args.repeats, cpu=True)
    print(f"grid {args.nx} x {args.nt}, sinh mesh, width 4 sigma sqrt(T) + rT: "
          f"median wall time {t:.3f} s ({n / t:,.0f} options/s), CPU time {c:.3f} s "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if ql is None:
        return
    idx = torch.randperm(n, generator=g)[: (8 if args.quick else args.check)].tolist()
    err_crr, err_fd = [], []
    for i in idx:
        opt, proc = ql_setup("put", S[i].item(), K[i].item(), r[i].item(), 0.0, vol[i].item(),
                             int(days[i]))
        crr = ql_crr_avg(opt, proc, 4000)
        fd = 2 * ql_fd(opt, proc, 1000, 800) - ql_fd(opt, proc, 500, 800)
        err_crr.append(abs(vals[i].item() - crr))
        err_fd.append(abs(vals[i].item() - fd))
    print(f"max |error| on {len(idx)} random contracts: vs CRR avg(4000,4001) "
          f"{max(err_crr):.2e} (median {statistics.median(err_crr):.2e}); vs QuantLib FD "
          f"Richardson {max(err_fd):.2e} (median {statistics.median(err_fd):.2e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (small sweep, 1,000 puts)")
    ap.add_argument("--device", default="cpu", help="torch device for our solver (cpu, cuda)")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (QuantLib uses 1)")
    ap.add_argument("--nx", type=int, default=300, help="throughput grid: nodes")
    ap.add_argument("--nt", type=int, default=75, help="throughput grid: time steps")
    ap.add_argument("--check", type=int, default=64, help="throughput: contracts checked")
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA requested but not available; running on cpu")
        args.device = "cpu"
    if ql is None:
        print("QuantLib not installed: only our timings are printed")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if not args.skip_sweep and ql is not None:
        sweep(args)
    throughput(args)


if __name__ == "__main__":
    main()
