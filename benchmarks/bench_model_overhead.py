"""Overhead of the depth options, and the speed-up of per-sample early exit.

1. Training step (forward + backward + SGD step) of a CIFAR-stem ResNet-18 with each option
   against the plain model of the same compute, medians over interleaved repeats:
   - gates (gated=True, all sub-paths on: the cost of the gating machinery itself; target <= 5%);
   - skip-aware norms (gated, base configuration TTTT: mandatory blocks switch to their second BN
     set) against a plain ResNet with the same blocks, layers = (1, 1, 1, 1) (target <= 5%);
   - exits (per-block heads, and the shared head through later skip projections), which add
     real compute and are reported, not targeted.
2. Per-sample early exit at batch 256 (eval mode): a rule that stops half of the samples at the
   middle exit (the state-mean median, calibrated on the batch) against running every sample to
   full depth (target >= 1.3x), and against the ideal ratio from multiply-adds; on the CIFAR
   ResNet-18 (whose early, high-resolution blocks dominate CPU time), on a residual MLP with
   equal-cost blocks (where halfway in depth is halfway in time), and on a ViT-Tiny (depth 12,
   width 192, 32x32 input with patch 4: 65 tokens; equal-cost blocks of large per-sample matmuls).

Runs on CPU, and on CUDA too when it is available (synchronised timings).
Run: `python benchmarks/bench_model_overhead.py` (`--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from odedepth.models import create_model, early_exit
from odedepth.stopping import StoppingRule


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _step_fn(model, x, y, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if isinstance(out, tuple):
            # exits: train all of them (mean CE over the trajectory)
            traj = out[1]
            loss = F.cross_entropy(traj.outputs.flatten(0, 1), y.repeat_interleave(traj.n_depths))
        else:
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
    return step


def training_overhead(dev, width, size, batch, repeats):
    torch.manual_seed(0)
    common = dict(num_classes=10, stem="cifar", channels=(width, 2 * width, 4 * width, 8 * width))
    variants = {
        "plain": (create_model("resnet18", **common), None),
        "gates (all on)": (create_model("resnet18", gated=True, **common), "FFFF"),
        "plain (1,1,1,1)": (create_model("resnet18", layers=(1, 1, 1, 1), **common), None),
        "skip-aware norms (TTTT)": (create_model("resnet18", gated=True, **common), "TTTT"),
        "exits per_block": (create_model("resnet18", exits="per_block", **common), None),
        "exits shared": (create_model("resnet18", exits="shared", **common), None),
    }
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    steps = {}
    for name, (m, cfg) in variants.items():
        m.to(dev).train()
        if cfg is not None:
            m.configure(cfg)
        steps[name] = _step_fn(m, x, y, torch.optim.SGD(m.parameters(), lr=0.01))
        for _ in range(2):  # warm-up (with the one in _interleaved: three steps, as before)
            steps[name]()
    med = _interleaved(steps, repeats, dev)
    print(f"\n[{dev}] training step, batch {batch}, {size}x{size}, widths {width}x(1,2,4,8), "
          f"median of {repeats}:")
    print("| variant | ms/step | vs reference | reference |")
    print("|---|---|---|---|")
    ref = {"plain": "plain", "gates (all on)": "plain", "plain (1,1,1,1)": "plain (1,1,1,1)",
           "skip-aware norms (TTTT)": "plain (1,1,1,1)", "exits per_block": "plain",
           "exits shared": "plain"}
    for k, v in med.items():
        r = v / med[ref[k]]
        print(f"| {k} | {v * 1e3:.2f} | {r:.3f} ({(r - 1) * 100:+.1f}%) | {ref[k]} |")
    return med


class HalfAtDepth(StoppingRule):
    """Stops, at one depth, the samples whose state mean is above a threshold."""

    def __init__(self, depth: float, threshold: float = 0.0):
        super().__init__()
        self.depth, self.threshold = float(depth), float(threshold)
        self.seen = None

    def score(self, depth, state, logits):
        at = depth == self.depth
        if at.any() and self.seen is None:
            self.seen = state.flatten(1).mean(1).detach()
        s = state.flatten(1).mean(1) - self.threshold
        return torch.where(at, s, torch.full_like(s, -1.0))


def _interleaved(fns: dict, repeats: int, dev) -> dict:
    """Median time of each callable, runs interleaved so that load drift hits all alike."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            f()
            _sync(dev)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def early_exit_speedup(dev, name, model, plain, x, repeats):
    model.to(dev).eval()
    plain.to(dev).eval()
    depths = model.exit_depths()
    mid = depths[len(depths) // 2 - 1]  # the middle block
    probe = HalfAtDepth(mid, threshold=float("inf"))
    with torch.no_grad():
        early_exit(model, x, probe)
    half = HalfAtDepth(mid, threshold=float(probe.seen.median()))
    everyone = HalfAtDepth(mid, threshold=-float("inf"))
    with torch.no_grad():
        _, idx = early_exit(model, x, half)
        frac = (torch.tensor(depths, device=dev)[idx] == mid).double().mean().item()
        t = _interleaved({
            "traj": lambda: model(x),
            "plain": lambda: plain(x),
            "half": lambda: early_exit(model, x, half),
            "all_mid": lambda: early_exit(model, x, everyone),
        }, repeats, dev)
    costs = model.exit_costs(tuple(x.shape[1:]))
    k_mid = depths.index(mid)
    ideal = costs[-1] / (frac * costs[k_mid] + (1 - frac) * costs[-1])
    print(f"\n[{dev}] per-sample early exit, {name}, batch {x.shape[0]}: {frac:.0%} of samples "
          f"stop at block {mid} of {depths[-1]} ({costs[k_mid] / costs[-1]:.0%} of the MACs, "
          f"{t['all_mid'] / t['traj']:.0%} of the full-depth time), median of {repeats} "
          "interleaved runs:")
    print("| run | ms | speed-up of early exit |")
    print("|---|---|---|")
    print(f"| full depth, all exits evaluated | {t['traj'] * 1e3:.2f} | {t['traj'] / t['half']:.2f}x |")
    print(f"| full depth, plain model (no exits) | {t['plain'] * 1e3:.2f} | "
          f"{t['plain'] / t['half']:.2f}x |")
    print(f"| early exit with compaction (half stop at block {mid}) | {t['half'] * 1e3:.2f} | - |")
    print(f"| everyone stops at block {mid} | {t['all_mid'] * 1e3:.2f} | |")
    print(f"ideal speed-up from MACs: {ideal:.2f}x (target >= 1.3x vs full depth)")


def resnet_case(dev, width, size, batch, repeats):
    torch.manual_seed(0)
    common = dict(num_classes=10, stem="cifar", channels=(width, 2 * width, 4 * width, 8 * width))
    m = create_model("resnet18", exits="per_block", **common)
    plain = create_model("resnet18", **common)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("exits")},
                          strict=False)
    x = torch.randn(batch, 3, size, size, device=dev)
    early_exit_speedup(dev, f"CIFAR ResNet-18 widths {width}x(1,2,4,8) {size}x{size}", m, plain, x,
                       repeats)


def mlp_case(dev, dim, blocks, batch, repeats):
    # Equal-cost blocks: "halfway" in depth is halfway in time, which isolates the cost of the
    # exit heads, the rule and the compaction.
    torch.manual_seed(0)
    common = dict(dim=dim, hidden=2 * dim, layers=(blocks,), in_chans=dim, num_classes=10)
    m = create_model("resmlp", exits="per_block", **common)
    plain = create_model("resmlp", **common)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("exits")},
                          strict=False)
    x = torch.randn(batch, dim, device=dev)
    early_exit_speedup(dev, f"residual MLP {blocks} blocks dim {dim} hidden {2 * dim}", m, plain,
                       x, repeats)


def vit_case(dev, img_size, patch, batch, repeats, **arch):
    # Equal-cost blocks whose matmuls are (tokens x dim) per sample, so a half batch is close to
    # half the time. The plain model shares the weights of the one with exits.
    torch.manual_seed(0)
    common = dict(img_size=img_size, patch_size=patch, num_classes=10, **arch)
    m = create_model("vit_tiny", exits="per_block", **common)
    plain = create_model("vit_tiny", **common)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("exits")},
                          strict=False)
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    c = m.config
    tokens = (img_size // patch) ** 2 + 1
    early_exit_speedup(dev, f"ViT depth {c['depth']} width {c['embed_dim']} {img_size}x{img_size} "
                       f"patch {patch} ({tokens} tokens)", m, plain, x, repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devs = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devs:
        gpu = dev.type == "cuda"
        if args.quick:
            training_overhead(dev, 8, 16, 16, 5)
            resnet_case(dev, 8, 16, 256, 3)
            mlp_case(dev, 64, 8, 256, 3)
            vit_case(dev, 16, 4, 256, 3, embed_dim=48, depth=4, num_heads=3)
        else:
            training_overhead(dev, 64 if gpu else 16, 32, 128 if gpu else 32, 50 if gpu else 30)
            resnet_case(dev, 64 if gpu else 16, 32, 256, 50 if gpu else 15)
            mlp_case(dev, 1024 if gpu else 512, 8, 256, 50 if gpu else 15)
            vit_case(dev, 32, 4, 256, 50 if gpu else 15)  # vit_tiny: depth 12, width 192


if __name__ == "__main__":
    main()
