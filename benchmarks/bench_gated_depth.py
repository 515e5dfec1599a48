"""Gated depth vs ADN vs plain training of the same ResNet on scikit-learn's digits (CPU).

A CIFAR-stem ResNet-18 of small width (gated: every stage = 1 mandatory + 1 skippable block)
is trained three ways on the same data, seed and optimiser:

- plain: the full configuration FFFF only (the skip-aware BN copies stay untrained);
- gated depth: one gate draw per mini-batch, self-distillation every 10 steps (alpha 0.5),
  calibration by p_s for the all-on configuration at inference; with both readings of the
  unpublished schedule: per-stage p 0.9 -> 0.5 ("gated/stage"), and one p annealed over epochs
  0.9 -> 0.5 ("gated/anneal");
- ADN: two passes per step (super CE + base KD, alpha 0.5, T 1).

Then every one of the 2^4 static configurations is evaluated on the held-out split, with its
multiply-adds (odedepth.analysis.count_macs), and the wall-clock of the base configuration
TTTT against the full one FFFF is timed (batch 1 and batch 256): the two configurations take
turns in blocks of `--block` consecutive calls, the first of each block an untimed warm-up, the
order within a round alternating, so that load from other jobs hits both alike; medians over the
timed calls. The training times are single runs (no warm-up, no repeats).

Run: `python benchmarks/bench_gated_depth.py` (about 10 minutes on 1 core), `--quick` for a smoke
run (a few seconds of training; accuracies then mean nothing), `--latency-only` for the TTTT vs
FFFF timing alone (no training: the latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from odedepth.analysis import ParetoPoint, count_macs, latency_table, pareto_frontier
from odedepth.losses import GatedDepthObjective, GateSchedule, adn_step
from odedepth.models import create_model
from odedepth.train import evaluate, fit


def digits(size: int, seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    if size != 8:
        X = F.interpolate(X, size=(size, size), mode="bilinear", align_corners=False)
    X = (X - X.mean()) / X.std()
    y = torch.tensor(d.target)
    idx_tr, idx_te = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2,
                                      random_state=seed, stratify=y.numpy())
    return (X[idx_tr], y[idx_tr]), (X[idx_te], y[idx_te])


def build(calibrate: bool, width: int):
    return create_model("resnet18", gated=True, num_classes=10, in_chans=1, stem="cifar",
                        channels=(width, 2 * width, 4 * width, 8 * width), calibrate=calibrate)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, small width")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--size", type=int, default=16, help="upsampled image size (digits are 8x8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-only", action="store_true",
                    help="skip training and the accuracy table; time TTTT vs FFFF only")
    ap.add_argument("--rounds", type=int, default=None,
                    help="latency: turns per configuration (default 17, --quick 4)")
    ap.add_argument("--block", type=int, default=4,
                    help="latency: consecutive calls per turn, the first an untimed warm-up")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.width, args.size = 1, 8, 8
    if args.rounds is None:
        args.rounds = 4 if args.quick else 17
    if args.block < 2:
        ap.error("--block must be at least 2 (one warm-up + one timed call)")
    torch.set_num_threads(args.threads)
    (Xtr, ytr), (Xte, yte) = digits(args.size)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(Xtr, ytr), batch_size=64, shuffle=True, generator=g)
    test = DataLoader(TensorDataset(Xte, yte), batch_size=256)
    configs = ["".join(c) for c in itertools.product("FT", repeat=4)]
    print(f"digits: {len(ytr)} train / {len(yte)} test, {args.size}x{args.size}, "
          f"ResNet-18 CIFAR stem, widths {args.width}x(1,2,4,8), {args.epochs} epochs, "
          f"{torch.get_num_threads()} thread(s)")

    if args.latency_only:
        m = build(calibrate=True, width=args.width)
        macs = {c: count_macs(m.configure(c), (1, 1, args.size, args.size)).macs
                for c in ("FFFF", "TTTT")}
    else:
        m, macs = train_and_evaluate(args, train, test, configs, g)
    latency(m, args, macs)


def train_and_evaluate(args, train, test, configs, g):
    results, models, train_time = {}, {}, {}
    methods = ("plain", "gated/stage", "gated/anneal", "adn")
    for method in methods:
        torch.manual_seed(0)
        g.manual_seed(0)
        m = build(calibrate=method.startswith("gated"), width=args.width)
        kw = {}
        if method == "plain":
            m.configure("FFFF")
        elif method.startswith("gated"):
            sched = (GateSchedule(m.n_stages) if method == "gated/stage" else
                     GateSchedule(m.n_stages, mode="annealed", epochs=args.epochs))
            kw["objective"] = GatedDepthObjective(m, sched, distill_every=10, alpha=0.5,
                                                  generator=torch.Generator().manual_seed(1))
        else:
            kw["step_fn"] = functools.partial(adn_step, alpha=0.5, T=1.0, topk=10)
        t0 = time.perf_counter()
        fit(m, train, epochs=args.epochs, lr=0.05, weight_decay=5e-4, **kw)
        train_time[method] = time.perf_counter() - t0
        results[method] = {c: evaluate(m, test, config=c)["accuracy"] for c in configs}
        models[method] = m

    macs = {}
    m = models["gated/stage"]
    for c in configs:
        macs[c] = count_macs(m.configure(c), (1, 1, args.size, args.size)).macs
    m.configure("FFFF")

    print("\n| config | M MACs | " + " | ".join(f"{k} acc" for k in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for c in sorted(configs, key=lambda c: -macs[c]):
        print(f"| {c} | {macs[c] / 1e6:.2f} | "
              + " | ".join(f"{results[k][c]:.4f}" for k in methods) + " |")
    for method in methods:
        accs = torch.tensor(list(results[method].values()))
        front = pareto_frontier([ParetoPoint(c, macs[c], results[method][c]) for c in configs])
        print(f"{method:12s}: train {train_time[method]:.1f}s (single run), mean acc over 16 "
              f"configs {accs.mean():.4f} (std {accs.std():.4f}), FFFF {results[method]['FFFF']:.4f}, "
              f"TTTT {results[method]['TTTT']:.4f}; frontier: "
              + ", ".join(p.label for p in front))
    return m, macs


def latency(m, args, macs):
    print(f"\nwall-clock, gated model, eval mode: FFFF and TTTT in turns, {args.rounds} rounds of "
          f"{args.block} calls each (first untimed), median of {args.rounds * (args.block - 1)} "
          f"timed calls; widths {args.width}x(1,2,4,8), {args.size}x{args.size}, "
          f"{torch.get_num_threads()} thread(s)")
    print("| batch | FFFF ms | TTTT ms | TTTT/FFFF time | MACs ratio |")
    print("|---|---|---|---|---|")
    for b in (1, 256):
        times = {"FFFF": [], "TTTT": []}
        for r in range(args.rounds):
            # alternate the order within a round so neither configuration always goes first
            for c in (("FFFF", "TTTT") if r % 2 == 0 else ("TTTT", "FFFF")):
                m.configure(c)
                res = latency_table(m, (1, args.size, args.size), batch_sizes=(b,), warmup=1,
                                    repeats=args.block - 1)
                times[c] += res[b].times
        f, t = statistics.median(times["FFFF"]), statistics.median(times["TTTT"])
        print(f"| {b} | {f * 1e3:.3f} | {t * 1e3:.3f} | {t / f:.3f} | "
              f"{macs['TTTT'] / macs['FFFF']:.3f} |")


if __name__ == "__main__":
    main()
