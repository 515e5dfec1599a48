"""The main job (`odedepth demo`): per-sample depth on digits, decided by learned stopping rules.

1. Train a continuous-depth classifier on scikit-learn's digits: embed (linear 64 -> d) ->
   ODE flow (time-dependent MLP field, weights on hat functions of t) -> linear head, with the
   stage cost gamma int l ds (so that intermediate predictions are useful) and our depth
   regulariser int w(t) ||f||^2 dt (diminishing returns), by backpropagation through
   :func:`solvers.ode.solve` with RK4.
2. With the flow frozen, fit the stopping rules on the training split:
   hazard (exact expected objective, integrated with the state), free boundary
   (Longstaff--Schwartz on checkpoint trajectories) and event boundary (trained through the
   event-time gradient of the solver).
3. Evaluate on the test split with real per-sample halting (dopri5, terminal events, finished
   samples leave the batch): accuracy, stopping times, NFE and wall time per rule and for the
   fixed-horizon model; write plots and results (JSON + markdown) to `out`, as a set: all files
   are written into a hidden staging folder in `out` and moved in at the end (results.json
   last), so an interrupted run leaves the previous run's outputs untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from ..data import check_seed, load_digits_split
from ..flows import ContinuousDepthClassifier, MLPField, ODEBlock
from ..losses import FlowObjective, flow_objective, sample_end_time, stopped_objective
from ..stopping import (
    EventBoundaryRule,
    FreeBoundaryRule,
    HazardRule,
    MaxProbability,
    RuleFeatures,
)

__all__ = ["DemoConfig", "build_model", "train_flow", "fit_rules", "evaluate_rule", "run"]


@dataclass
class DemoConfig:
    """Everything the demo does, in one place (defaults: the full run)."""

    dim: int = 32             # state size d
    hidden: int = 64          # field hidden width
    n_basis: int = 5          # hat functions of t for the field's weights
    t1: float = 1.0           # horizon T
    epochs: int = 30          # flow training epochs
    batch: int = 128
    lr: float = 3e-3
    train_dt: float = 1 / 8   # RK4 step while training the flow
    stage_weight: float = 1.0  # gamma
    depth_reg: float = 0.01   # our diminishing-returns regulariser weight
    kinetic: float = 0.0
    jacobian: float = 0.0
    end_time_spread: float = 0.0  # STEER: train on horizons ~ U(T - b, T + b) when b > 0
    cost: float = 0.05        # running cost c per unit depth (nats per unit t)
    rule_dt: float = 1 / 16   # RK4 step for rule fitting
    checkpoints: int = 16     # trajectory checkpoints for the free boundary
    hazard_steps: int = 80
    event_steps: int = 40
    rule_lr: float = 1e-2
    rtol: float = 1e-3        # inference tolerances (dopri5)
    atol: float = 1e-4
    event_tol: float = 1e-4   # stopping-time tolerance (fewer root-finding iterations)
    eval_batch: int = 256
    repeats: int = 3          # wall-time repeats (median)
    train_subset: int | None = None  # train on the first n training samples only (quick runs)

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(epochs=2, hazard_steps=4, event_steps=3, checkpoints=8, repeats=1,
                   train_subset=640)


def build_model(cfg: DemoConfig, n_in: int = 64, n_classes: int = 10) -> ContinuousDepthClassifier:
    """embed (linear) -> ODEBlock(MLPField with hat-function weights) -> head (linear)."""
    field = MLPField(cfg.dim, cfg.hidden, depth=2, time="hat", n_basis=cfg.n_basis, t1=cfg.t1)
    flow = ODEBlock(field, t1=cfg.t1, method="dopri5", rtol=cfg.rtol, atol=cfg.atol,
                    event_tol=cfg.event_tol * cfg.t1)
    return ContinuousDepthClassifier(nn.Linear(n_in, cfg.dim), flow, nn.Linear(cfg.dim, n_classes),
                                     checkpoints=cfg.checkpoints)


def _frozen(model: nn.Module):
    """Context: the model's parameters do not require grad (rules train on a fixed flow)."""
    class _Ctx:
        def __enter__(self):
            self.flags = [p.requires_grad for p in model.parameters()]
            for p in model.parameters():
                p.requires_grad_(False)

        def __exit__(self, *exc):
            for p, f in zip(model.parameters(), self.flags):
                p.requires_grad_(f)
    return _Ctx()


def train_flow(model: ContinuousDepthClassifier, x, y, cfg: DemoConfig, *, generator=None,
               progress=None) -> list[float]:
    """Train embed + flow + head on the fixed-horizon objective with stage cost and
    regularisers (RK4, step `cfg.train_dt`). Returns the mean loss per epoch."""
    obj = FlowObjective(model.head, stage_weight=cfg.stage_weight, depth_reg=cfg.depth_reg,
                        kinetic=cfg.kinetic, jacobian=cfg.jacobian, t1=cfg.t1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs))
    n = len(x)
    history = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, cfg.batch):
            idx = perm[i:i + cfg.batch]
            t1 = None
            if cfg.end_time_spread > 0:
                t1 = sample_end_time(cfg.t1, len(idx), cfg.end_time_spread, generator=generator)
            v = flow_objective(model.flow, model.embed(x[idx]), y[idx], obj, t1=t1,
                               method="rk4", dt=cfg.train_dt, generator=generator)
            loss = v.total.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        history.append(total / n)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{history[-1]:.3f}")
    return history


def fit_rules(model: ContinuousDepthClassifier, x, y, cfg: DemoConfig, *, generator=None,
              progress=None) -> dict:
    """Fit the three learned rules on a frozen flow. Returns `{name: rule}`."""
    feats = RuleFeatures("confidence", t1=cfg.t1)
    rules = {}

    def _adam_steps(rule, steps, loss_on):
        # Adam on the rule's parameters, one random mini-batch of the training split per step.
        opt = torch.optim.Adam(rule.parameters(), lr=cfg.rule_lr)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (cfg.eval_batch,), generator=generator)
            loss = loss_on(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress is not None:
                progress.update(1)

    with _frozen(model):
        h0 = model.embed(x).detach()
        # 1. hazard: minimise the exact expected objective (integrated with the state)
        hz = HazardRule(RuleFeatures("confidence", t1=cfg.t1), hidden=16,
                        init_rate=2.0 / cfg.t1)
        obj = FlowObjective(model.head, rule=hz, cost=cfg.cost, t1=cfg.t1)
        _adam_steps(hz, cfg.hazard_steps, lambda idx: flow_objective(
            model.flow, h0[idx], y[idx], obj, method="rk4", dt=cfg.rule_dt).total.mean())
        rules["hazard"] = hz
        # 2. free boundary: Longstaff-Schwartz on checkpoint trajectories
        with torch.no_grad():
            traj = model.flow.trajectory(h0, model.head, model.checkpoint_times(
                n=cfg.checkpoints, dtype=h0.dtype), method="rk4", dt=cfg.rule_dt,
                keep_states=False)
        rules["free boundary"] = FreeBoundaryRule(feats, cost=cfg.cost).fit(traj, y)
        if progress is not None:
            progress.update(1)
        # 3. event boundary: trained through the solver's event-time gradient
        ev = EventBoundaryRule(RuleFeatures("confidence", t1=cfg.t1), hidden=16, init_stop=0.5)
        _adam_steps(ev, cfg.event_steps, lambda idx: stopped_objective(
            model.flow, h0[idx], y[idx], ev, model.head, cost=cfg.cost)[0].mean())
        rules["event boundary"] = ev
    return rules


@torch.no_grad()
def evaluate_rule(model: ContinuousDepthClassifier, rule, x, y, *, batch: int = 256,
                  repeats: int = 1, **solve_kw) -> dict:
    """Accuracy, stopping times, NFE and wall time (median over `repeats`) of real per-sample
    halting on (x, y), in batches of `batch`. `rule=None` integrates to the horizon."""
    walls = []
    for _ in range(max(1, repeats)):
        preds, taus, nfes = [], [], []
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            p = model.predict(x[i:i + batch], rule, **solve_kw)
            preds.append(p.logits.argmax(-1))
            taus.append(p.tau)
            nfes.append(p.nfe)
        walls.append(time.perf_counter() - t0)
    pred, tau, nfe = torch.cat(preds), torch.cat(taus).double(), torch.cat(nfes).double()
    q = torch.quantile(tau, torch.tensor([0.5, 0.9], dtype=tau.dtype))
    return {"accuracy": float((pred == y).double().mean()), "mean_tau": float(tau.mean()),
            "p50_tau": float(q[0]), "p90_tau": float(q[1]), "mean_nfe": float(nfe.mean()),
            "wall_s": float(np.median(walls)), "tau": tau.tolist()}


def _check_out(out) -> str:
    if out is None or (isinstance(out, str) and not out.strip()):
        raise ValueError("demo: out must name a folder")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"demo: out={out!r} exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ValueError(f"demo: out={out!r} is not writable")
    return out


def _write_atomic(path: str, text: str):
    from ..checkpoint import atomic_write

    atomic_write(path, lambda fh: fh.write(text), binary=False, caller="demo")


def _move_in(staged: str, path: str):
    """Rename a staged output over `path`, keeping the mode of the file it replaces (else
    ``0o666 & ~umask``); a symbolic link at `path` is replaced by the file."""
    from ..checkpoint import file_mode

    os.chmod(staged, file_mode(path))
    os.replace(staged, path)


def format_table(results: dict, horizon: float) -> str:
    """Markdown table: rule | accuracy | mean tau | p50/p90 tau | mean NFE | wall time."""
    lines = ["| rule | accuracy (%) | mean tau | p50 / p90 tau | mean NFE | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} | {r['mean_tau']:.3f} "
                     f"({100 * r['mean_tau'] / horizon:.0f}% of T) | {r['p50_tau']:.3f} / "
                     f"{r['p90_tau']:.3f} | {r['mean_nfe']:.1f} | {r['wall_s']:.3f} |")
    return "\n".join(lines)


def run(out="outputs/demo", quick: bool = False, seed: int = 0, config: DemoConfig | None = None,
        verbose: bool = True) -> dict:
    """Train, fit the rules, evaluate, write plots and results to `out`; returns the results.

    **Arguments:**

    - `out`: output folder (created; must not be a file). The outputs replace the previous
      run's only after all of them were written (staged in a hidden `.tmp-run-*` folder inside
      `out`, then renamed in, results.json last); on failure `out` is left as it was (a folder
      this run created is removed again if empty).
    - `quick`: a much shorter run for smoke tests (~15 s).
    - `seed`: seed of the data split, the initialisation and the batches, an integer in
      [0, 2**63).
    - `config`: a :class:`DemoConfig` overriding the defaults (`quick` then only shortens it).
    - `verbose`: print the table and a progress bar.

    **Returns:** `{"config", "rules": {name: metrics}, "train_seconds", "out"}`.

    **Raises:** `ValueError` for a bad `out`, seed or configuration, before `out` is created.
    """
    from tqdm.auto import tqdm

    seed = check_seed(seed, "demo")  # every argument is checked before `out` is created
    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    if quick and config is not None:
        q = DemoConfig.quick()
        cfg = replace(cfg, epochs=q.epochs, hazard_steps=q.hazard_steps,
                      event_steps=q.event_steps, repeats=1, train_subset=q.train_subset)
    if cfg.epochs < 1 or cfg.cost < 0 or not cfg.t1 > 0:
        raise ValueError(f"demo: bad configuration {cfg}")
    # Tiny matrices: one thread per process avoids the (large) cost of thread synchronisation,
    # which dominates on a shared 2-core machine.
    created = not os.path.exists(os.fspath(out)) if out is not None else False
    out = _check_out(out)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, cfg, seed, verbose, tqdm)
    except BaseException:
        if created and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # a folder this failed run created holds nothing: remove it
        raise
    finally:
        torch.set_num_threads(old_threads)


def _run(out, cfg: DemoConfig, seed: int, verbose: bool, tqdm) -> dict:
    from .. import plots

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = load_digits_split(seed)
    model = build_model(cfg, data.n_features, data.n_classes)
    x_train, y_train = data.x_train, data.y_train
    if cfg.train_subset is not None:
        x_train, y_train = x_train[:cfg.train_subset], y_train[:cfg.train_subset]
    total = cfg.epochs + cfg.hazard_steps + 1 + cfg.event_steps + 6
    bar = tqdm(total=total, desc="odedepth demo", disable=not verbose, leave=False)
    bar.set_description("training flow")
    train_flow(model, x_train, y_train, cfg, generator=gen, progress=bar)
    bar.set_description("fitting rules")
    rules = fit_rules(model, x_train, y_train, cfg, generator=gen, progress=bar)
    train_s = time.perf_counter() - t_start
    model.eval()
    bar.set_description("evaluating")
    solve_kw = dict(method="dopri5", rtol=cfg.rtol, atol=cfg.atol)
    evaluated = {"fixed horizon T": None, **rules, "max-prob 0.99": MaxProbability(0.99)}
    results = {}
    for name, rule in evaluated.items():
        results[name] = evaluate_rule(model, rule, data.x_test, data.y_test,
                                      batch=cfg.eval_batch, repeats=cfg.repeats, **solve_kw)
        bar.update(1)
    # fixed-horizon curve: the same model stopped at every checkpoint
    with torch.no_grad():
        traj = model.trajectory(data.x_test, n=cfg.checkpoints, **solve_kw)
        curve_acc = (traj.outputs.argmax(-1) == data.y_test[:, None]).double().mean(0)
        curve = {"tau": traj.depths.tolist(), "accuracy": curve_acc.tolist(),
                 "nfe": traj.cost_grid().double().mean(0).tolist()}
        # scores of the boundary rules along test trajectories, for the boundary figure
        dense = model.trajectory(data.x_test[:40], n=40, **solve_kw)
        b, n = dense.batch_size, dense.n_depths
        flat = dense.outputs.reshape(b * n, -1)
        tt = dense.depth_grid().reshape(-1)
        fb_scores = rules["free boundary"].score(tt, None, flat).reshape(b, n)
        ev_scores = rules["event boundary"].score(tt, None, flat).reshape(b, n)
    bar.update(1)
    figures = {
        "boundary_free.png": lambda p: plots.plot_stopping_boundary(
            dense.depths, fb_scores, torch.tensor(results["free boundary"]["tau"][:40]), path=p,
            title="free boundary: C(t,h) - q(t,h)"),
        "boundary_event.png": lambda p: plots.plot_stopping_boundary(
            dense.depths, ev_scores, torch.tensor(results["event boundary"]["tau"][:40]),
            path=p, title="event boundary: g(t,h)"),
        "stopping_times.png": lambda p: plots.plot_stopping_times(
            {k: v["tau"] for k, v in results.items() if k != "fixed horizon T"},
            horizon=cfg.t1, path=p),
        "accuracy_vs_depth.png": lambda p: plots.plot_accuracy_vs_depth(
            results, curve=curve, path=p),
    }
    import matplotlib.pyplot as plt

    # The whole output set is written into a hidden staging folder inside `out` and moved in
    # only once every file exists (results.json last), so an interrupted run leaves the
    # previous results as they were and no staging folder behind.
    stage = tempfile.mkdtemp(prefix=".tmp-run-", dir=out)
    try:
        for fname, make in figures.items():
            plt.close(make(os.path.join(stage, fname)))
            bar.update(1)
        table = format_table(results, cfg.t1)
        summary = {
            "config": asdict(cfg), "seed": seed, "train_seconds": train_s,
            "total_seconds": time.perf_counter() - t_start,
            "torch_threads": torch.get_num_threads(),
            "rules": {k: {kk: vv for kk, vv in v.items() if kk != "tau"}
                      for k, v in results.items()},
            "fixed_horizon_curve": curve, "figures": sorted(figures), "out": os.path.abspath(out),
        }
        md = (f"# odedepth demo: per-sample depth on digits (seed {seed})\n\n"
              f"Test split, {len(data.y_test)} samples, horizon T = {cfg.t1}, running cost c = "
              f"{cfg.cost}, dopri5 rtol={cfg.rtol} atol={cfg.atol}, batch {cfg.eval_batch}; "
              f"training {train_s:.1f} s, total {summary['total_seconds']:.1f} s.\n\n{table}\n\n"
              + "".join(f"![{f}]({f})\n" for f in sorted(figures)))
        _write_atomic(os.path.join(stage, "results.md"), md)
        _write_atomic(os.path.join(stage, "results.json"),
                      json.dumps(summary, indent=2, default=str))
        for name in [*sorted(figures), "results.md", "results.json"]:
            _move_in(os.path.join(stage, name), os.path.join(out, name))
    finally:
        bar.close()
        shutil.rmtree(stage, ignore_errors=True)
    if verbose:
        print(table)
        print(f"training {train_s:.1f} s, total {summary['total_seconds']:.1f} s")
        print(f"results and plots written to {os.path.abspath(out)}")
    return {**summary, "rules_full": results}

