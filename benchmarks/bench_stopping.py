"""Bermudan max-call on 5 assets: Longstaff--Schwartz and neural stopping, lower and upper bounds.

Problem (Andersen & Broadie 2004; Broadie & Cao 2008; Becker, Cheridito & Jentzen 2019, Table 2):
d = 5 independent assets, S0 = 100, K = 100, r = 0.05, dividend 0.1, sigma = 0.2, T = 3,
exercise at t = 0, 1/3, ..., 3 (9 dates after 0), payoff (max_i S_i - K)^+.
Published reference used: Becker, Cheridito & Jentzen (2019), Table 2, d = 5, S0 = 100: lower
bound 26.149, upper bound 26.167, point estimate 26.16. The 95% interval [26.147, 26.164] from the
earlier literature (Andersen & Broadie 2004; Broadie & Cao 2008) is quoted as given in our task
brief; we did not re-read those papers' tables.

    python benchmarks/bench_stopping.py           # 10^6 LSM paths, as in the issue
    python benchmarks/bench_stopping.py --quick   # smoke run (seconds)

Prints one table: simulation and fit time, lower bound (independent paths) and Andersen--Broadie
upper bound with 95% intervals and their times, the lower bound minus the published lower bound
26.149 and the upper bound minus the published upper bound 26.167 (two separate gaps); then the
fit-time ratio neural / LSM and whether the published point 26.16 lies inside [lower CI low, upper
CI high]. Every time is one run without warm-up (no repeats), so it moves with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from solvers import stopping as st  # noqa: E402

BCJ_LOWER, BCJ_UPPER, BCJ_POINT = 26.149, 26.167, 26.16
D, S0, K, R, Q, SIG, T, N = 5, 100.0, 100.0, 0.05, 0.10, 0.2, 3.0, 9


def problem(dtype, device):
    times = torch.linspace(0.0, T, N + 1, dtype=dtype, device=device)
    gbm = st.GeometricBrownianMotion(S0, R, SIG, times, dividend=Q, dim=D, dtype=dtype,
                                     device=device)
    disc = gbm.discount()

    def reward(p):
        return disc * (p.amax(dim=-1) - K).clamp_min(0)

    def features(p):
        # prices sorted in decreasing order and the payoff (the usual max-call summaries; the
        # value is symmetric in the assets), divided by K to be of order one
        s = p.sort(dim=-1, descending=True).values / K
        return torch.cat([s, (s[..., :1] - 1).clamp_min(0)], dim=-1)

    return gbm, reward, features


def simulate(gbm, n, g, chunk=250_000):
    return torch.cat([gbm.sample(min(chunk, n - a), g, antithetic=min(chunk, n - a) % 2 == 0)
                      for a in range(0, n, chunk)])


def lower_bound(policy, gbm, reward, features, n, g, chunk=250_000):
    # evaluate in chunks; combine the per-chunk means into one estimate
    vals = []
    for a in range(0, n, chunk):
        p = gbm.sample(min(chunk, n - a), g)
        idx = policy.stop_index(features(p), reward(p))
        vals.append(reward(p).gather(1, idx[:, None]).squeeze(1))
    return st.estimate_mean(torch.cat(vals))


def log(msg):
    print(msg, flush=True)


def fmt(e):
    return f"{e.value:8.4f} [{e.ci[0]:.3f}, {e.ci[1]:.3f}]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run with few paths")
    ap.add_argument("--paths", type=int, default=1_000_000, help="LSM training paths")
    ap.add_argument("--eval-paths", type=int, default=1_000_000, help="lower-bound paths")
    ap.add_argument("--neural-paths", type=int, default=200_000, help="neural training paths")
    ap.add_argument("--basis", default="poly2", choices=["poly2", "poly3"],
                    help="LSM basis on the 6 features (poly2: 28 functions, poly3: 84)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--cold-start", action="store_true",
                    help="fresh network per date (the library default) instead of the paper's "
                         "warm start from the next date's network")
    ap.add_argument("--outer", type=int, default=1000, help="dual: outer paths")
    ap.add_argument("--inner", type=int, default=500, help="dual: inner paths per step")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine more threads made "
                         "the small neural-network steps 5x slower; 0 leaves torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.quick:
        args.paths, args.eval_paths, args.neural_paths = 20_000, 20_000, 10_000
        args.outer, args.inner, args.epochs = 50, 50, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gbm, reward, features = problem(torch.float64, dev)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    log(f"Bermudan max-call d={D}, S0={S0}, K={K}, r={R}, q={Q}, sigma={SIG}, T={T}, "
          f"{N} dates; torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}")
    print(f"published (BCJ 2019 Table 2): lower {BCJ_LOWER}, upper {BCJ_UPPER}, point {BCJ_POINT}")
    rows = []

    def row(name, short, policy, n_train, t_sim, t_fit):
        # lower bound on independent paths and Andersen--Broadie upper bound, both timed
        t0 = time.perf_counter()
        low = lower_bound(policy, gbm, reward, features, args.eval_paths, g)
        t_low = time.perf_counter() - t0
        t0 = time.perf_counter()
        up = st.dual_upper_bound(policy, gbm, reward, n_outer=args.outer, n_inner=args.inner,
                                 generator=g, features_fn=features)
        t_up = time.perf_counter() - t0
        log(f"  {short}: simulate {t_sim:.2f} s, fit {t_fit:.2f} s, lower {t_low:.2f} s, "
            f"upper {t_up:.2f} s")
        return name, n_train, t_sim, t_fit, low, t_low, up, t_up

    # --- Longstaff--Schwartz
    t0 = time.perf_counter()
    paths = simulate(gbm, args.paths, g)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = st.longstaff_schwartz(features(paths), reward(paths), basis=args.basis)
    t_fit = time.perf_counter() - t0
    del paths
    nfun = {"poly2": 28, "poly3": 84}[args.basis]
    rows.append(row(f"LSM {args.basis} ({nfun} fns)", "LSM", fit.policy, args.paths, t_sim,
                    t_fit))

    # --- neural stopping (Becker, Cheridito & Jentzen 2019)
    t0 = time.perf_counter()
    paths = simulate(gbm, args.neural_paths, g)
    t_sim_n = time.perf_counter() - t0
    t0 = time.perf_counter()
    nfit = st.neural(features(paths), reward(paths), epochs=args.epochs, batch_size=2048,
                     lr=1e-3, seed=args.seed, warm_start=not args.cold_start)
    t_fit_n = time.perf_counter() - t0
    del paths
    start = "cold" if args.cold_start else "warm"
    rows.append(row(f"neural ({args.epochs} ep, {start})", "neural", nfit.policy,
                    args.neural_paths, t_sim_n, t_fit_n))

    print(f"\nlower bound: {args.eval_paths} independent paths; upper bound: Andersen-Broadie "
          f"{args.outer} outer x {args.inner} inner paths")
    hdr = (f"{'method':22s} {'train':>9s} {'sim s':>6s} {'fit s':>7s} "
           f"{'lower [95% CI]':>27s} {'low s':>6s} {'upper [95% CI]':>27s} {'up s':>7s} "
           f"{'low-26.149':>10s} {'up-26.167':>9s}")
    print(hdr)
    print("-" * len(hdr))
    for name, n, ts, tf, lo, tl, upb, tu in rows:
        print(f"{name:22s} {n:9d} {ts:6.2f} {tf:7.2f} {fmt(lo):>27s} {tl:6.2f} {fmt(upb):>27s} "
              f"{tu:7.2f} {lo.value - BCJ_LOWER:+10.4f} {upb.value - BCJ_UPPER:+9.4f}")
    print(f"\nratio fit time neural / LSM: {rows[1][3] / rows[0][3]:.2f} "
          f"(training paths {args.neural_paths} vs {args.paths}; all times: single runs)")
    inside = [lo.ci[0] <= BCJ_POINT <= upb.ci[1] for _, _, _, _, lo, _, upb, _ in rows]
    print(f"published point {BCJ_POINT} inside [lower CI low, upper CI high]: "
          f"LSM {inside[0]}, neural {inside[1]}")
    return {"lsm": (rows[0][4], rows[0][6]), "neural": (rows[1][4], rows[1][6])}


if __name__ == "__main__":
    main()
