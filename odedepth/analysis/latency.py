"""Latency harness: warm-up, then the median of many timed runs, on CPU or CUDA.

GPU kernels are asynchronous, so every timed run is bracketed by `torch.cuda.synchronize()` on
CUDA devices; otherwise the clock measures only the kernel launches. Medians (not means) because
a shared machine produces occasional slow outliers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["LatencyResult", "measure_latency", "latency_table"]


@dataclass
class LatencyResult:
    """Timings of one workload (seconds per call).

    **Arguments:**

    - `times`: every timed run, in seconds.
    - `batch_size`: samples per call (for throughput), or `None` if unknown.
    """

    times: list[float]
    batch_size: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p10(self) -> float:
        return _quantile(self.times, 0.1)

    @property
    def p90(self) -> float:
        return _quantile(self.times, 0.9)

    @property
    def throughput(self) -> float:
        """Samples per second at the median time (needs `batch_size`)."""
        if self.batch_size is None:
            raise ValueError("LatencyResult.throughput needs batch_size")
        return self.batch_size / self.median

    def __repr__(self) -> str:
        return (f"LatencyResult(median={self.median * 1e3:.3f} ms, p10={self.p10 * 1e3:.3f} ms, "
                f"p90={self.p90 * 1e3:.3f} ms, runs={len(self.times)})")


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fn: Callable[[], object],
    *,
    warmup: int = 5,
    repeats: int = 30,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    min_time: float = 0.0,
) -> LatencyResult:
    """Time a zero-argument callable: `warmup` untimed calls, then at least `repeats` timed ones.

    **Arguments:**

    - `fn`: the workload, e.g. `lambda: model(x)`.
    - `warmup`: untimed calls first (allocator, autotuning, lazy init).
    - `repeats`: timed calls (at least 1).
    - `device`: the device the workload runs on; CUDA devices are synchronised around each call.
    - `batch_size`: samples per call, recorded for throughput.
    - `min_time`: keep timing (beyond `repeats`) until this many seconds were spent in total.

    **Returns:** a :class:`LatencyResult`.
    """
    if not callable(fn):
        raise TypeError(f"measure_latency: fn must be callable, got {type(fn).__name__}")
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"measure_latency: warmup must be a non-negative int, got {warmup}")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"measure_latency: repeats must be a positive int, got {repeats}")
    dev = None if device is None else torch.device(device)
    for _ in range(int(warmup)):
        fn()
    _sync(dev)
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or total < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return LatencyResult(times=times, batch_size=batch_size)


def latency_table(
    model: nn.Module,
    sample_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 32),
    *,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 30,
    **forward_kwargs,
) -> dict[int, LatencyResult]:
    """Inference latency of `model` at several batch sizes (no grad, eval mode).

    **Arguments:**

    - `model`: the module (moved to `device`; its train/eval mode is restored afterwards).
    - `sample_shape`: shape of one sample without the batch axis, e.g. `(3, 224, 224)`.
    - `batch_sizes`: batch sizes to time (batch 1 and batch N in the papers' tables).
    - `device`, `warmup`, `repeats`: as in :func:`measure_latency`.
    - `**forward_kwargs`: passed to `model(...)`.

    **Returns:** `{batch_size: LatencyResult}`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"latency_table: model must be an nn.Module, got {type(model).__name__}")
    if not all(int(b) == b and b > 0 for b in batch_sizes):
        raise ValueError(f"latency_table: batch sizes must be positive ints, got {batch_sizes}")
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    out = {}
    try:
        for b in batch_sizes:
            x: Tensor = torch.randn((int(b), *sample_shape), device=dev)
            with torch.no_grad():
                out[int(b)] = measure_latency(lambda x=x: model(x, **forward_kwargs), warmup=warmup,
                                              repeats=repeats, device=dev, batch_size=int(b))
    finally:
        model.train(was_training)
    return out
