"""SDEBlock: the stochastic limit of deep residual networks (stochastic depth, noisy branches).

dh = f(t, h) dt + sigma(t, h) dW,  h(0) = h0, t in [0, T], diagonal noise.

A residual network whose L blocks are each kept with probability p (stochastic depth, Huang et
al. 2016) and rescaled, h_{k+1} = h_k + (b_k / p) F_k(h_k) / L, has increments with mean
F_k / L and variance (1 - p) / p ||F_k||^2 / L^2; scaled so that the variance is O(1/L) (e.g.
noisy branches, Liu et al. 2019 "Neural SDE"; Peluchetti & Favaro 2020 "Infinitely deep neural
networks as diffusion processes"), the network converges to an SDE of this form.

Backends:

- `"torchsde"`: :func:`torchsde.sdeint` (Li, Wong, Chen, Duvenaud 2020), any of its methods, the
  whole batch to the horizon;
- `"euler"`: our own Euler--Maruyama with **per-sample stopping**: after every step each running
  sample's :class:`~odedepth.stopping.StoppingRule` score is evaluated, samples whose score is >= 0
  stop there and leave the active set (the batch is compacted, so later steps only compute
  the running samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SDEBlock", "SDESolution"]


@dataclass
class SDESolution:
    """`h` `(batch, *state)` at the stopping time or the horizon; `t` `(batch,)` that time;
    `halted` `(batch,)` bool; `n_steps` `(batch,)` steps taken per sample;
    `ts`/`hs`: `(n,)` grid and `(batch, n, *state)` path on it (torchsde backend, when asked)."""

    h: Tensor
    t: Tensor
    halted: Tensor
    n_steps: Tensor
    ts: Tensor | None = None
    hs: Tensor | None = None


class _TorchsdeAdapter(nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, block, shape):
        super().__init__()
        self.block, self.shape = block, shape

    def f(self, t, y):
        h = y.view(y.shape[0], *self.shape)
        tt = t.to(y.dtype).expand(y.shape[0])
        return self.block.field(tt, h).reshape(y.shape[0], -1)

    def g(self, t, y):
        h = y.view(y.shape[0], *self.shape)
        tt = t.to(y.dtype).expand(y.shape[0])
        return self.block.diffusion_at(tt, h).reshape(y.shape[0], -1)


class SDEBlock(nn.Module):
    """Integrate dh = f dt + sigma dW over depth [0, t1].

    **Arguments:**

    - `field`: drift f(t, h) (any field of :mod:`odedepth.flows.fields`).
    - `sigma`: a number (constant diagonal noise) or a module `sigma(t, h)` returning the
      diagonal diffusion with the state's shape.
    - `t1`: horizon; `dt`: step size (`t1 / dt` steps, rounded up).
    - `backend`: `"euler"` (ours, per-sample stopping) or `"torchsde"`; `method`: the torchsde
      method (default `"euler"`, i.e. Euler--Maruyama in the Ito sense).

    **Returns:** `block(h0)` -> h(t1); :meth:`solve` -> :class:`SDESolution`.
    """

    def __init__(self, field: nn.Module, sigma: float | nn.Module = 0.1, t1: float = 1.0,
                 dt: float = 0.05, backend: str = "euler", method: str = "euler"):
        super().__init__()
        if not (math.isfinite(t1) and t1 > 0):
            raise ValueError(f"SDEBlock: t1 must be positive and finite, got {t1}")
        if not (math.isfinite(dt) and 0 < dt <= t1):
            raise ValueError(f"SDEBlock: dt must lie in (0, t1], got {dt}")
        if backend not in ("euler", "torchsde"):
            raise ValueError(f"SDEBlock: backend must be 'euler' or 'torchsde', got {backend!r}")
        if isinstance(sigma, (int, float)):
            if not (math.isfinite(sigma) and sigma >= 0):
                raise ValueError(f"SDEBlock: sigma must be >= 0, got {sigma}")
        elif not isinstance(sigma, nn.Module):
            raise TypeError(f"SDEBlock: sigma must be a number or a module, got "
                            f"{type(sigma).__name__}")
        self.field, self.sigma = field, sigma
        self.t1, self.dt, self.backend, self.method = float(t1), float(dt), backend, method

    def diffusion_at(self, t: Tensor, h: Tensor) -> Tensor:
        if isinstance(self.sigma, nn.Module):
            s = self.sigma(t, h)
            if s.shape != h.shape:
                raise ValueError(f"SDEBlock: sigma(t, h) must have the state's shape "
                                 f"{tuple(h.shape)}, got {tuple(s.shape)}")
            return s
        return torch.full_like(h, float(self.sigma))

    def forward(self, h0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.solve(h0, generator=generator).h

    def solve(self, h0: Tensor, *, stop=None, head: nn.Module | None = None,
              generator: torch.Generator | None = None, t_eval=None) -> SDESolution:
        """Simulate from `h0` `(batch, *state)`.

        **Arguments:**

        - `stop`: a memoryless :class:`~odedepth.stopping.StoppingRule` (euler backend only):
          each sample stops after the first step where its score is >= 0.
        - `head`: maps states to logits for rules that read the prediction.
        - `generator`: random source of the Brownian increments (euler backend).
        - `t_eval`: checkpoints for the path (torchsde backend only: the euler backend raises
          `ValueError` rather than return no path).
        """
        if not isinstance(h0, Tensor) or h0.dim() < 2 or not h0.is_floating_point():
            raise ValueError("SDEBlock.solve: h0 must be a floating tensor (batch, *state)")
        if not torch.isfinite(h0).all():
            raise ValueError("SDEBlock.solve: h0 contains NaN or inf")
        if stop is not None and not callable(getattr(stop, "score", None)):
            raise TypeError(f"SDEBlock.solve: stop must be a StoppingRule (with a score method), "
                            f"got {type(stop).__name__}")
        n_steps = max(1, math.ceil(self.t1 / self.dt - 1e-9))
        dt = self.t1 / n_steps
        if self.backend == "torchsde":
            if stop is not None:
                raise ValueError("SDEBlock: per-sample stopping needs backend='euler'")
            return self._torchsde(h0, dt, t_eval)
        if t_eval is not None:
            raise ValueError("SDEBlock.solve: t_eval (checkpoints of the path) is supported by "
                             "backend='torchsde' only; the 'euler' backend returns the end "
                             "states (use backend='torchsde', or call solve without t_eval)")
        if stop is not None and not getattr(stop, "memoryless", True):
            raise ValueError(f"SDEBlock: {type(stop).__name__} depends on history and cannot "
                             "stop a path online")
        b = h0.shape[0]
        h_out = h0.clone()
        t_out = torch.full((b,), self.t1, dtype=h0.dtype, device=h0.device)
        halted = torch.zeros(b, dtype=torch.bool, device=h0.device)
        steps = torch.full((b,), n_steps, dtype=torch.long, device=h0.device)
        idx = torch.arange(b, device=h0.device)  # original indices of the running samples
        h = h0
        for k in range(n_steps):
            t = torch.full((h.shape[0],), k * dt, dtype=h0.dtype, device=h0.device)
            noise = torch.randn(h.shape, dtype=h.dtype, device=h.device, generator=generator)
            h = h + self.field(t, h) * dt + self.diffusion_at(t, h) * noise * math.sqrt(dt)
            if stop is None or k == n_steps - 1:
                continue
            t_next = t + dt
            s = stop.score(t_next, h, None if head is None else head(h))
            done = s >= 0
            if done.any():
                which = idx[done]
                h_out = h_out.index_copy(0, which, h[done])
                t_out = t_out.index_copy(0, which, t_next[done])
                halted = halted.index_copy(0, which, torch.ones_like(which, dtype=torch.bool))
                steps = steps.index_copy(0, which, torch.full_like(which, k + 1))
                keep = ~done
                h, idx = h[keep], idx[keep]  # compaction: later steps only see running samples
                if len(idx) == 0:
                    break
        if len(idx):
            h_out = h_out.index_copy(0, idx, h)
        return SDESolution(h=h_out, t=t_out, halted=halted, n_steps=steps)

    def _torchsde(self, h0: Tensor, dt: float, t_eval) -> SDESolution:
        import torchsde

        shape = tuple(h0.shape[1:])
        b = h0.shape[0]
        ts = torch.as_tensor([0.0, self.t1] if t_eval is None else t_eval, dtype=h0.dtype,
                             device=h0.device)
        if t_eval is not None and (ts[0] != 0 or (ts.diff() <= 0).any() or ts[-1] > self.t1):
            raise ValueError("SDEBlock.solve: t_eval must start at 0 and increase within [0, t1]")
        ys = torchsde.sdeint(_TorchsdeAdapter(self, shape), h0.reshape(b, -1), ts, dt=dt,
                             method=self.method)
        hs = ys.permute(1, 0, 2).reshape(b, len(ts), *shape)
        dev = h0.device
        return SDESolution(h=hs[:, -1], t=torch.full((b,), float(ts[-1]), dtype=h0.dtype,
                                                     device=dev),
                           halted=torch.zeros(b, dtype=torch.bool, device=dev),
                           n_steps=torch.full((b,), round(float(ts[-1]) / dt), device=dev),
                           ts=ts if t_eval is not None else None,
                           hs=hs if t_eval is not None else None)
