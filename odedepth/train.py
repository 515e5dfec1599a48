"""A small training engine: epochs over a DataLoader, evaluation per configuration, AMP, checkpoints.

Lean on purpose: the objectives live in :mod:`odedepth.losses`, this module only runs them.

- :func:`train_one_epoch` runs one pass with either a plain loss, an *objective* (a callable
  `(x, y) -> loss` or `(loss, info)`, e.g. :class:`odedepth.losses.GatedDepthObjective`), or a
  *step function* that owns its backward passes and optimizer step (e.g.
  :func:`odedepth.losses.adn_step`);
- :func:`evaluate` measures accuracy and loss, optionally for a static configuration
  (`model.configure("TTFF")`);
- :func:`fit` ties them together with an SGD/cosine default, per-epoch schedules
  (`objective.set_epoch`, `DistributedSampler.set_epoch`) and optional checkpoints
  (:mod:`odedepth.checkpoint`, atomic writes).

Mixed precision (float16 autocast with a gradient scaler) is used on CUDA when `amp=True` (the
default there); CPU runs in full precision. Under DistributedDataParallel (torchrun), wrap the
model before passing it; gated objectives broadcast their gate draws so that every rank runs the
same sub-network (build DDP with `find_unused_parameters=True`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["train_one_epoch", "evaluate", "fit"]


def _logits(out) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def _to(batch, device):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("train: loader batches must be (inputs, targets) pairs")
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    objective: Callable | None = None,
    step_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    scaler=None,
    scheduler=None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One pass over `loader` in train mode.

    **Arguments:**

    - `model`, `loader` (batches `(x, y)`), `optimizer`.
    - `objective`: `(x, y) -> loss` or `(loss, info)`; default `loss_fn(model(x), y)`.
    - `step_fn`: `(model, x, y, optimizer) -> dict with "loss"`, doing its own backward and step
      (excludes `objective`).
    - `loss_fn`: `(logits, y) -> loss`, cross-entropy by default.
    - `device`; `amp`: float16 autocast on CUDA (ignored elsewhere); `scaler`: a GradScaler.
    - `scheduler`: stepped after every optimizer step (per-iteration schedules).
    - `grad_clip`: max gradient norm.

    **Returns:** `{"loss": mean loss, "steps": n, "seconds": wall time}`.
    """
    if objective is not None and step_fn is not None:
        raise ValueError("train_one_epoch: pass either objective or step_fn, not both")
    dev = torch.device(device)
    use_amp = bool(amp) and dev.type == "cuda"
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    model.train()
    total, steps = 0.0, 0
    t0 = time.perf_counter()
    for batch in loader:
        x, y = _to(batch, dev)
        if step_fn is not None:
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                out = step_fn(model, x, y, optimizer)
            loss_value = float(out["loss"])
        else:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                if objective is not None:
                    res = objective(x, y)
                    loss = res[0] if isinstance(res, tuple) else res
                else:
                    loss = loss_fn(_logits(model(x)), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train_one_epoch: non-finite loss {loss.item()} at step "
                                         f"{steps}")
            if scaler is not None:
                scaler.scale(loss).backward()
                if grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
            loss_value = loss.item()
        if scheduler is not None:
            scheduler.step()
        total += loss_value
        steps += 1
    if steps == 0:
        raise ValueError("train_one_epoch: the loader produced no batches")
    return {"loss": total / steps, "steps": steps, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu",
             config: str | None = None, loss_fn: Callable | None = None) -> dict[str, float]:
    """Accuracy and mean loss in eval mode, optionally for a static configuration.

    **Arguments:** `model`, `loader`, `device`; `config`: a configuration string applied with
    `model.configure` (restored afterwards); `loss_fn` (cross-entropy by default, sum-reduced per
    batch internally).

    **Returns:** `{"accuracy", "loss", "n"}`.
    """
    dev = torch.device(device)
    inner = _unwrap(model)
    previous = getattr(inner, "configuration", None) if config is not None else None
    if config is not None:
        if not hasattr(inner, "configure"):
            raise TypeError(f"evaluate: {type(inner).__name__} has no configure(); build it gated")
        inner.configure(config)
    was_training = model.training
    model.eval()
    correct, n, total = 0, 0, 0.0
    try:
        for batch in loader:
            x, y = _to(batch, dev)
            logits = _logits(model(x))
            if loss_fn is None:
                total += F.cross_entropy(logits, y, reduction="sum").item()
            else:
                total += float(loss_fn(logits, y)) * y.shape[0]
            correct += (logits.argmax(dim=1) == y).sum().item()
            n += y.shape[0]
    finally:
        model.train(was_training)
        if previous is not None:
            inner.configure(previous)
    if n == 0:
        raise ValueError("evaluate: the loader produced no samples")
    return {"accuracy": correct / n, "loss": total / n, "n": n}


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str | None = "cosine",
    objective: Callable | None = None,
    step_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    eval_loader: Iterable | None = None,
    eval_configs: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    grad_clip: float | None = None,
    checkpoint: str | None = None,
    resume: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Train for `epochs`; evaluate after each epoch; optionally checkpoint.

    **Arguments:**

    - `model`, `train_loader`, `epochs` (>= 1).
    - `optimizer`: default SGD(`lr`, `momentum`, `weight_decay`).
    - `schedule`: `"cosine"` (per-iteration cosine annealing to 0), `None` (constant lr).
    - `objective` / `step_fn` / `loss_fn`: as in :func:`train_one_epoch`; `objective.set_epoch`
      is called each epoch when present.
    - `eval_loader`, `eval_configs`: evaluate each configuration string (or the current one).
    - `device`; `amp`: mixed precision (default: on for CUDA); `grad_clip`.
    - `checkpoint`: a path; after every epoch the model's state dict, the optimizer, LR
      scheduler and AMP scaler states, the RNG states (torch's global CPU generator, the CUDA
      generator of `device`, and the `generator` of the loader and of its sampler), the number of
      finished epochs, the run's configuration and the history are saved atomically
      (:func:`odedepth.checkpoint.save`). Checked before training: its folder must exist and be
      writable, and the path must not be a folder.
    - `resume`: a checkpoint written by `fit` (often the same path as `checkpoint`); restores
      all of the above and trains the remaining epochs, so that a run interrupted after epoch k
      and resumed with the same arguments (same model class, loader, `epochs`, `schedule`, ...)
      ends with the same parameters and history as an uninterrupted one (bit-identical on CPU;
      timings differ). Not saved: state of `objective` / `step_fn` beyond `set_epoch` (e.g. an
      objective's own generator), Python's and NumPy's global RNGs.
    - `log`: e.g. `print`.

    **Returns:** the history, one dict per epoch (`"epoch"`, `"train"`, `"eval"`); after
    `resume`, the checkpoint's epochs followed by the new ones.

    **Raises:** `ValueError` for bad arguments, a `checkpoint` that is a folder or in a folder
    that is not writable; `FileNotFoundError` for a missing checkpoint folder or `resume` file;
    :class:`odedepth.checkpoint.CheckpointError` (a `ValueError`) for a `resume` file that is
    corrupt, not written by `fit`, or written for another configuration (naming what differs).
    Nothing is trained or written when any of these is raised.
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int, got {epochs}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"fit: lr must be positive and finite, got {lr}")
    if schedule not in (None, "cosine"):
        raise ValueError(f"fit: schedule must be 'cosine' or None, got {schedule!r}")
    if checkpoint is not None:  # fail now, not after the first epoch's training
        checkpoint = os.fspath(checkpoint)
        folder = os.path.dirname(os.path.abspath(checkpoint))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"fit: checkpoint directory {folder!r} does not exist")
        if os.path.isdir(checkpoint):
            raise ValueError(f"fit: checkpoint {checkpoint!r} is a folder, not a file path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"fit: checkpoint folder {folder!r} is not writable")
    state = _load_resume(resume) if resume is not None else None
    dev = torch.device(device)
    model.to(dev)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=weight_decay)
    use_amp = (dev.type == "cuda") if amp is None else (bool(amp) and dev.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp and step_fn is None else None
    scheduler = None
    if schedule == "cosine":
        try:
            per_epoch = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("fit: the cosine schedule needs a loader with len()") from None
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * per_epoch)
    config = _run_config(model, train_loader, optimizer, epochs, schedule, use_amp, dev)
    generators = _loader_generators(train_loader)
    history, start = [], 0
    if state is not None:
        history, start = _restore(state, resume, config, model, optimizer, scheduler, scaler,
                                  generators, dev)
    for epoch in range(start, int(epochs)):
        if objective is not None and hasattr(objective, "set_epoch"):
            objective.set_epoch(epoch)
        sampler = getattr(train_loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        tr = train_one_epoch(model, train_loader, optimizer, objective=objective, step_fn=step_fn,
                             loss_fn=loss_fn, device=dev, amp=use_amp, scaler=scaler,
                             scheduler=scheduler, grad_clip=grad_clip)
        ev = {}
        if eval_loader is not None:
            for cfg in (eval_configs or [None]):
                ev[cfg or "current"] = evaluate(model, eval_loader, device=dev, config=cfg)
        rec = {"epoch": epoch, "train": tr, "eval": ev}
        history.append(rec)
        if log is not None:
            accs = " ".join(f"{k}={v['accuracy']:.4f}" for k, v in ev.items())
            log(f"epoch {epoch + 1}/{epochs} loss={tr['loss']:.4f} ({tr['seconds']:.1f}s) {accs}")
        if checkpoint is not None:
            from .checkpoint import save

            save({"format": _FORMAT, "epoch": epoch + 1, "config": config,
                  "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": None if scheduler is None else scheduler.state_dict(),
                  "scaler": None if scaler is None else scaler.state_dict(),
                  "rng": _rng_state(generators, dev), "history": history}, checkpoint)
    return history


_FORMAT = "odedepth.train.fit/1"
_KEYS = ("format", "epoch", "config", "model", "optimizer", "scheduler", "scaler", "rng",
         "history")


def _loader_generators(loader) -> list:
    """The distinct torch.Generators that drive the loader's shuffling and worker seeds."""
    found = []
    for obj in (loader, getattr(loader, "sampler", None),
                getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and not any(g is h for h in found):
            found.append(g)
    return found


def _run_config(model, loader, optimizer, epochs, schedule, use_amp, dev) -> dict:
    try:
        per_epoch = len(loader)
    except TypeError:
        per_epoch = None
    return {"epochs": int(epochs), "schedule": schedule, "amp": bool(use_amp),
            "device_type": dev.type, "steps_per_epoch": per_epoch,
            "model": type(_unwrap(model)).__name__, "optimizer": type(optimizer).__name__,
            "loader_generators": len(_loader_generators(loader))}


def _rng_state(generators, dev) -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "loader": [g.get_state() for g in generators]}


def _load_resume(path):
    from .checkpoint import CheckpointError, load

    path = os.fspath(path)
    state = load(path)  # FileNotFoundError / CheckpointError naming the file
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        missing = [k for k in _KEYS if k not in state] if isinstance(state, dict) else list(_KEYS)
        raise CheckpointError(f"fit: resume={path!r} was not written by fit with resume support "
                              f"(format {_FORMAT!r}; missing {', '.join(missing) or 'nothing'})")
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise CheckpointError(f"fit: resume={path!r} lacks {', '.join(missing)}")
    return state


def _restore(state, path, config, model, optimizer, scheduler, scaler, generators, dev):
    """Check `state` against this run, then load it; returns (history, first epoch to run)."""
    from .checkpoint import CheckpointError, load_state_dict

    path = os.fspath(path)
    diffs = [f"{k}: checkpoint {state['config'].get(k)!r} vs now {v!r}"
             for k, v in config.items() if state["config"].get(k) != v]
    if diffs:
        raise CheckpointError(f"fit: resume={path!r} was written for another configuration ("
                              + "; ".join(diffs) + ")")
    done = state["epoch"]
    if not (isinstance(done, int) and 1 <= done <= config["epochs"]
            and len(state["history"]) == done):
        raise CheckpointError(f"fit: resume={path!r} has an inconsistent epoch count {done!r} "
                              f"(history of {len(state['history'])}, epochs={config['epochs']})")
    # all checks that need no loading are done; the model load checks keys and shapes first
    load_state_dict(_unwrap(model), state["model"], strict=True)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if dev.type == "cuda" and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], dev)
        for g, s in zip(generators, state["rng"]["loader"]):
            g.set_state(s)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"fit: resume={path!r} does not fit this run's optimizer, "
                              f"scheduler or RNG ({type(exc).__name__}: {exc})") from exc
    return list(state["history"]), done
