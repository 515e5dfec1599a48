"""Depth benchmark on digits (test split): learned stopping vs the fixed horizon.

Trains (a) a continuous-depth classifier with stage cost and our depth regulariser, then fits
the stopping rules on it (hazard, free boundary, event boundary; see odedepth/demos/depth.py),
and (b) the fixed-horizon model of the same architecture (plain training: no stage cost, no
depth regulariser). Reports, on the test split:

- accuracy, mean / p50 / p90 stopping time, mean NFE for every rule and both fixed-horizon runs;
- wall-clock inference at batch 256 (median of repeats, interleaved so that a load change on
  the shared machine hits every candidate alike), with real per-sample halting: solver events,
  finished samples leave the batch;
- the targets: the best rule's accuracy within 0.5 points of the fixed-horizon model, mean
  horizon <= 50% of T, wall-clock >= 1.5x faster;
- NFE and accuracy of flows trained with and without the kinetic / Jacobian regularisers
  (Finlay et al. 2020).

Usage: python benchmarks/bench_depth.py [--quick] [--seed 0] [--hidden 1024] [--repeats 11]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odedepth.data import load_digits_split  # noqa: E402
from odedepth.demos.depth import (  # noqa: E402
    DemoConfig,
    build_model,
    evaluate_rule,
    fit_rules,
    train_flow,
)


def _wall(model, rule, x, solve_kw):
    t0 = time.perf_counter()
    with torch.no_grad():
        model.predict(x, rule, **solve_kw)
    return time.perf_counter() - t0


def _compare(label, candidates, rules, data, solve_kw, repeats, T):
    res = {name: evaluate_rule(m, r, data.x_test, data.y_test, batch=256, **solve_kw)
           for name, (m, r) in candidates.items()}
    # wall clock at batch 256, interleaved repeats, median
    xb = data.x_test[:256]
    walls = {name: [] for name in candidates}
    for m, r in candidates.values():  # warm-up
        _wall(m, r, xb, solve_kw)
    for _ in range(repeats):
        for name, (m, r) in candidates.items():
            walls[name].append(_wall(m, r, xb, solve_kw))
    for name in candidates:
        res[name]["wall256_ms"] = 1e3 * statistics.median(walls[name])

    print(f"\n### inference with {label}\n")
    print("| model / rule | accuracy (%) | mean tau (% of T) | p50 / p90 tau | mean NFE | "
          "wall @256 (ms, median) |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {100 * r['accuracy']:.2f} | {r['mean_tau']:.3f} "
              f"({100 * r['mean_tau'] / T:.0f}%) | {r['p50_tau']:.3f} / {r['p90_tau']:.3f} | "
              f"{r['mean_nfe']:.1f} | {r['wall256_ms']:.1f} |")

    ref = res["fixed-horizon model (plain)"]
    # best: the fastest rule meeting the accuracy and horizon targets; else the shallowest
    # meeting the accuracy target; else the most accurate
    ok = [n for n in rules if 100 * (ref["accuracy"] - res[n]["accuracy"]) <= 0.5]
    both = [n for n in ok if res[n]["mean_tau"] <= 0.5 * T]
    if both:
        best = min(both, key=lambda n: res[n]["wall256_ms"])
    elif ok:
        best = min(ok, key=lambda n: res[n]["mean_tau"])
    else:
        best = max(rules, key=lambda n: res[n]["accuracy"])
    b = res[best]
    d_acc = 100 * (b["accuracy"] - ref["accuracy"])
    frac = b["mean_tau"] / T
    speed = ref["wall256_ms"] / b["wall256_ms"]
    speed_same = res["stage-cost model at T"]["wall256_ms"] / b["wall256_ms"]
    print(f"\nbest rule: {best}")
    print(f"  accuracy vs fixed-horizon model: {d_acc:+.2f} points "
          f"[target >= -0.5: {'PASS' if d_acc >= -0.5 else 'FAIL'}]")
    print(f"  mean horizon: {100 * frac:.0f}% of T [target <= 50%: "
          f"{'PASS' if frac <= 0.5 else 'FAIL'}]")
    print(f"  wall-clock speed-up at batch 256: {speed:.2f}x vs the plain fixed-horizon model, "
          f"{speed_same:.2f}x vs the same network run to T [target >= 1.5x: "
          f"{'PASS' if speed >= 1.5 else 'FAIL'}]")
    print(f"  NFE ratio (plain fixed horizon / rule): {ref['mean_nfe'] / b['mean_nfe']:.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (tiny budgets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=1024,
                    help="field hidden width (1024: the field's work dominates the solver's "
                         "per-step and event overhead on CPU; the demo's 64 is overhead-bound)")
    ap.add_argument("--repeats", type=int, default=11, help="wall-clock repeats (median)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices on a shared machine: see the demo
    torch.manual_seed(args.seed)
    base = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = replace(base, hidden=args.hidden)
    repeats = 2 if args.quick else args.repeats
    data = load_digits_split(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    solve_kw = dict(method="dopri5", rtol=cfg.rtol, atol=cfg.atol)
    T = cfg.t1

    t0 = time.perf_counter()
    model = build_model(cfg)
    train_flow(model, data.x_train, data.y_train, cfg, generator=gen)
    rules = fit_rules(model, data.x_train, data.y_train, cfg, generator=gen)
    plain_cfg = replace(cfg, stage_weight=0.0, depth_reg=0.0)
    torch.manual_seed(args.seed)
    plain = build_model(plain_cfg)
    train_flow(plain, data.x_train, data.y_train, plain_cfg, generator=gen)
    print(f"training: {time.perf_counter() - t0:.1f} s (hidden {cfg.hidden}, "
          f"{cfg.epochs} epochs)")

    candidates = {"fixed-horizon model (plain)": (plain, None),
                  "stage-cost model at T": (model, None),
                  **{name: (model, rule) for name, rule in rules.items()}}
    settings = {"dopri5 (rtol 1e-3, atol 1e-4)": solve_kw,
                "rk4 (dt = T/16, a 16-layer grid)": dict(method="rk4", dt=T / 16)}
    for label, kw in settings.items():
        _compare(label, candidates, rules, data, kw, repeats, T)

    # regularisers: NFE and accuracy with and without kinetic / Jacobian terms
    print("\n| regulariser (plain flow, no stage cost) | accuracy (%) | mean NFE (dopri5) | "
          "train (s) |")
    print("|---|---|---|---|")
    reg_epochs = 2 if args.quick else max(1, cfg.epochs // 2)
    for label, kw in [("none", {}), ("kinetic 0.1", {"kinetic": 0.1}),
                      ("Jacobian 0.1", {"jacobian": 0.1})]:
        rc = replace(plain_cfg, epochs=reg_epochs, **kw)
        torch.manual_seed(args.seed)
        m = build_model(rc)
        t1 = time.perf_counter()
        train_flow(m, data.x_train, data.y_train, rc, generator=torch.Generator().manual_seed(
            args.seed))
        tr = time.perf_counter() - t1
        r = evaluate_rule(m, None, data.x_test, data.y_test, batch=256, **solve_kw)
        print(f"| {label} | {100 * r['accuracy']:.2f} | {r['mean_nfe']:.1f} | {tr:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
