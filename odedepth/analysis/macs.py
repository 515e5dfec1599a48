"""Multiply-adds, FLOPs and parameter counts of a model (or of one static configuration of it).

The literature's "4.1 GFLOPs" for ResNet-50 are multiply-adds (MACs); PyTorch's
:class:`torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-add. To avoid that
ambiguity every count here is reported under both names, ``.macs`` and ``.flops``.

Counting runs the forward pass on the ``meta`` device by default: shapes propagate, no arithmetic
is done, so ResNet-50 at 224x224 is counted in about a second on one CPU core. Models whose forward
pass depends on values (data-dependent early exit) cannot run on ``meta``; for them pass
``device="cpu"`` (or any real device) and a concrete ``input``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["MacCount", "count_macs", "count_parameters"]


@dataclass
class MacCount:
    """Result of :func:`count_macs`.

    **Arguments:**

    - `flops`: total floating-point operations as counted by `FlopCounterMode` (2 per multiply-add).
    - `by_module`: FLOPs per module, keyed as in `model.named_modules()` (the root is `""`);
      a parent's count includes its children's.
    - `by_op`: FLOPs per aten operator over the whole forward pass.
    """

    flops: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        """Multiply-adds (= FLOPs / 2): the convention of the ResNet/ADN papers."""
        return self.flops / 2

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def module_macs(self, name: str) -> float:
        """Multiply-adds of one module by its qualified name (0 if it did no counted work)."""
        return self.by_module.get(name, 0) / 2

    def __repr__(self) -> str:
        return f"MacCount(macs={self.macs:.4g}, flops={self.flops:.4g})"


def count_macs(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    input: Tensor | tuple | None = None,
    device: str | torch.device | None = "meta",
    dtype: torch.dtype = torch.float32,
    fallback: bool = True,
    **forward_kwargs,
) -> MacCount:
    """Count the multiply-adds and FLOPs of one forward pass.

    Only operators with a FLOP formula in `torch.utils.flop_counter` are counted (convolutions,
    matrix products, attention); normalisation, activations, pooling and additions are not, which
    is the convention behind the published ResNet numbers (conv + fc only).

    **Arguments:**

    - `model`: the module to count; its current configuration (e.g. gates set by
      `m.configure("TTTT")`) is what is counted. It is not modified: counting on `meta` runs on
      a deep copy.
    - `input_shape`: shape of a single input tensor, e.g. `(1, 3, 224, 224)`.
    - `input`: a concrete input (tensor or tuple of positional arguments) instead of
      `input_shape`; required when `device` is a real device and the forward pass reads values.
    - `device`: `"meta"` (default: no arithmetic) or a real device, or `None` to run where the
      model lives. The forward pass runs in eval mode (the mode is restored after).
    - `dtype`: dtype of the zero input built from `input_shape`.
    - `fallback`: if the forward pass cannot run on `meta` (it reads tensor values), count again
      on the model's own device with a zero input (real arithmetic, same counts).
    - `**forward_kwargs`: passed to `model(...)`.

    **Returns:** a :class:`MacCount` with `.macs`, `.flops` and per-module/per-op breakdowns.

    **Raises:** `TypeError` if `model` is not a module; `ValueError` for a missing or malformed
    shape.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_macs: model must be an nn.Module, got {type(model).__name__}")
    if (input_shape is None) == (input is None):
        raise ValueError("count_macs: pass exactly one of input_shape and input")
    if input_shape is not None:
        shape = tuple(input_shape)
        if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(
                f"count_macs: input_shape must be a non-empty sequence of positive ints, got "
                f"{input_shape!r}"
            )
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "meta":
        try:
            return _count(model, input_shape, input, device, dtype, forward_kwargs)
        except (RuntimeError, NotImplementedError) as err:
            if not fallback or "meta" not in str(err).lower():
                raise
            # The forward pass reads values (e.g. validates a trajectory): count for real.
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
    return _count(model, input_shape, input, device, dtype, forward_kwargs)


def _count(model, input_shape, input, device, dtype, forward_kwargs) -> MacCount:
    shape = None if input_shape is None else tuple(input_shape)
    if device.type == "meta":
        # Copy the module structure with meta stand-ins for every parameter and buffer (given
        # to deepcopy through its memo), so that the caller's weights are neither moved nor
        # duplicated in memory.
        memo: dict = {}
        for prm in model.parameters():
            memo[id(prm)] = nn.Parameter(torch.empty_like(prm, device="meta"),
                                         requires_grad=prm.requires_grad)
        for buf in model.buffers():
            memo[id(buf)] = torch.empty_like(buf, device="meta")
        run_model = copy.deepcopy(model, memo).to(device)
    else:
        run_model = model
    if input_shape is not None:
        args = (torch.zeros(shape, device=device, dtype=dtype),)
    else:
        args = input if isinstance(input, tuple) else (input,)
        args = tuple(a.to(device) if isinstance(a, Tensor) else a for a in args)

    counter = FlopCounterMode(display=False)
    # Eval mode: counting must leave batch-norm statistics untouched (and batch-1 inputs with
    # 1x1 maps are legal in eval only); the mode is restored afterwards.
    was_training = run_model.training
    run_model.eval()
    try:
        with torch.no_grad(), counter:
            run_model(*args, **forward_kwargs)
    finally:
        run_model.train(was_training)
    # FlopCounterMode names modules "<RootClass>.<path>"; strip the root so that the keys match
    # `model.named_modules()` (the root itself becomes "").
    root = type(run_model).__name__
    by_module = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        key = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        by_module[key] = int(sum(ops.values()))
    by_op: dict[str, int] = {}
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(op).split(".")[-1] if "." in str(op) else str(op)] = int(n)
    return MacCount(flops=int(counter.get_total_flops()), by_module=by_module, by_op=by_op)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once).

    **Arguments:**

    - `model`: the module.
    - `trainable_only`: count only parameters with `requires_grad`.

    **Returns:** an int.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_parameters: model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
