"""Train a gated-depth ResNet on scikit-learn's digits and look at its 16 sub-networks.

One model, trained once with the gated-depth objective (one gate draw per mini-batch,
self-distillation every 10 steps), then evaluated in every static configuration. A second
ResNet with shared exits (every block's state read out through the later skip projections and
the head) is trained with the stage cost and swept over max-probability early-exit thresholds.
Both accuracy-against-multiply-adds frontiers are plotted to `gated_resnet_digits.png`.

Run: `python examples/gated_resnet_digits.py [--epochs 5]` (about a minute on one CPU core).
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch.utils.data import DataLoader, TensorDataset

from odedepth.analysis import (
    ParetoPoint,
    count_macs,
    early_exit_sweep,
    pareto_frontier,
    plot_pareto,
)
from odedepth.losses import GatedDepthObjective, GateSchedule, stage_cost_loss
from odedepth.models import create_model
from odedepth.stopping import MaxProbability
from odedepth.train import evaluate, fit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default="gated_resnet_digits.png")
    args = ap.parse_args()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(0)
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    X = (X - X.mean()) / X.std()
    y = torch.tensor(d.target)
    tr, te = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    train = DataLoader(TensorDataset(X[tr], y[tr]), batch_size=64, shuffle=True)
    test = DataLoader(TensorDataset(X[te], y[te]), batch_size=256)

    model = create_model("resnet18", gated=True, num_classes=10, in_chans=1, stem="cifar",
                         channels=(16, 32, 64, 128))
    objective = GatedDepthObjective(model, GateSchedule(model.n_stages, mode="per_stage"),
                                    distill_every=10, alpha=0.5)
    fit(model, train, epochs=args.epochs, lr=0.05, objective=objective, log=print)

    points = []
    for cfg in ("".join(c) for c in itertools.product("FT", repeat=model.n_stages)):
        acc = evaluate(model, test, config=cfg)["accuracy"]
        macs = count_macs(model.configure(cfg), (1, 1, 8, 8)).macs
        points.append(ParetoPoint(cfg, macs, acc))
        print(f"{cfg}: {macs / 1e6:6.2f} M MACs, accuracy {acc:.4f}")
    print("Pareto frontier:", ", ".join(p.label for p in pareto_frontier(points)))

    # Exits: stage cost gamma * sum_k CE(y_hat_k) + CE(y_hat_N) on the shared-exit trajectory.
    torch.manual_seed(0)
    exits = create_model("resnet18", exits="shared", num_classes=10, in_chans=1, stem="cifar",
                         channels=(16, 32, 64, 128))

    def objective(x, y):
        return stage_cost_loss(exits(x)[1], y, gamma=0.1)

    fit(exits, train, epochs=args.epochs, lr=0.05, objective=objective, log=print)
    exits.eval()
    with torch.no_grad():
        trajs, ys = zip(*[(exits(x)[1], y) for x, y in test])
    from odedepth.trajectory import DepthTrajectory

    traj = DepthTrajectory(depths=trajs[0].depths, outputs=torch.cat([t.outputs for t in trajs]))
    # Backbone multiply-adds up to each exit (the readouts through later projections excluded).
    costs = exits.exit_costs((1, 8, 8))
    sweep = early_exit_sweep(traj, torch.cat(ys), MaxProbability,
                             [0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0], exit_costs=costs)
    for p in sweep:
        print(f"max-prob >= {p.label}: {p.cost / 1e6:6.2f} M MACs on average, accuracy "
              f"{p.accuracy:.4f}")
    ax = plot_pareto({"gated ResNet-18, static configurations": points,
                      "stage-cost ResNet-18, early exit (max-prob threshold)": sweep})
    ax.figure.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"plot written to {args.out}")


if __name__ == "__main__":
    main()
