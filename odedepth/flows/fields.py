"""Vector fields f(t, h) for continuous-depth networks, and weights that vary with depth t.

A residual network h_{k+1} = h_k + F_k(h_k) / L is forward Euler on dh/dt = f(t, h) with
t = k / L; the vector fields here are the continuous counterparts of residual branches. Each
field is *per-sample elementwise* (sample i's derivative depends only on sample i's state and
time), which is what lets the solver drop finished samples from the batch (compaction).

Time dependence, chosen with `time=`:

- `"none"`: an autonomous field f(h);
- `"concat"`: t is fed as an extra input feature (Chen et al. 2018, "Neural ODEs");
- `"stages"`: piecewise-constant weights, one set per slice [t_i, t_{i+1}) of [0, t1]: a stage of
  discrete blocks maps to a slice of depth;
- `"hat"` / `"legendre"`: a basis expansion W(t) = sum_i phi_i(t) W_i, with piecewise-linear hat
  functions on a uniform grid of [0, t1] (so that W(t_i) = W_i exactly: layer i sits at t_i)
  or Legendre polynomials on [0, t1] (Massaroli et al. 2020, "Dissecting neural ODEs", Galerkin
  weights). Beyond [0, t1] the time is clamped, so a field trained on [0, t1] stays bounded
  when integrated to a longer horizon.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TimeLinear", "MLPField", "ConvField", "TransformerField", "TIME_MODES"]

TIME_MODES = ("none", "concat", "stages", "hat", "legendre")


def _check_time(t: Tensor, batch: int, ref: Tensor) -> Tensor:
    """Broadcast t to a `(batch,)` tensor on the state's device and dtype."""
    t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"field: t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


class TimeLinear(nn.Module):
    """A linear layer whose weights depend on depth t.

    **Arguments:**

    - `in_features`, `out_features`: sizes as for `nn.Linear`.
    - `time`: one of `"none"`, `"concat"`, `"stages"`, `"hat"`, `"legendre"` (module docstring).
    - `n_basis`: number of stages or basis functions (ignored for `"none"`/`"concat"`).
    - `t1`: the depth interval [0, t1] the stages / basis cover.

    **Returns:** calling `layer(t, x)` with `t` `(batch,)` and `x` `(batch, in_features)` returns
    `(batch, out_features)`.
    """

    def __init__(self, in_features: int, out_features: int, time: str = "concat",
                 n_basis: int = 4, t1: float = 1.0):
        super().__init__()
        if time not in TIME_MODES:
            raise ValueError(f"TimeLinear: time must be one of {TIME_MODES}, got {time!r}")
        if time in ("stages", "hat", "legendre") and (int(n_basis) != n_basis or n_basis < 1):
            raise ValueError(f"TimeLinear: n_basis must be a positive integer, got {n_basis}")
        if time == "hat" and n_basis < 2:
            raise ValueError("TimeLinear: hat functions need n_basis >= 2 (two end nodes)")
        if not (math.isfinite(t1) and t1 > 0):
            raise ValueError(f"TimeLinear: t1 must be positive and finite, got {t1}")
        self.time, self.n, self.t1 = time, int(n_basis), float(t1)
        self.in_features, self.out_features = in_features, out_features
        k = 1 if time in ("none", "concat") else self.n
        fan_in = in_features + (1 if time == "concat" else 0)
        bound = 1.0 / math.sqrt(fan_in)
        # One weight matrix per stage / basis function; stored as (k, in, out) for a single matmul.
        self.weight = nn.Parameter(torch.empty(k, fan_in, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, out_features).uniform_(-bound, bound))

    def basis(self, t: Tensor) -> Tensor:
        """`(batch, n_basis)` basis values phi_i(t) (one-hot stage indicator for `"stages"`)."""
        s = (t / self.t1).clamp(0.0, 1.0)
        if self.time == "stages":
            idx = (s * self.n).floor().clamp(max=self.n - 1).long()
            return nn.functional.one_hot(idx, self.n).to(t.dtype)
        if self.time == "hat":
            # phi_i(s) = max(0, 1 - |s (n - 1) - i|): nodes at i / (n - 1)
            grid = torch.arange(self.n, dtype=t.dtype, device=t.device)
            return (1.0 - (s[:, None] * (self.n - 1) - grid).abs()).clamp(min=0.0)
        # Legendre P_0..P_{n-1} on x = 2s - 1 by Bonnet's recursion.
        x = 2.0 * s - 1.0
        ps = [torch.ones_like(x)]
        if self.n > 1:
            ps.append(x)
        for k in range(1, self.n - 1):
            ps.append(((2 * k + 1) * x * ps[k] - k * ps[k - 1]) / (k + 1))
        return torch.stack(ps, dim=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"TimeLinear: x must have shape (batch, {self.in_features}), got "
                             f"{tuple(x.shape)}")
        t = _check_time(t, x.shape[0], x)
        if self.time == "none":
            return x @ self.weight[0] + self.bias[0]
        if self.time == "concat":
            return torch.cat([x, t[:, None]], dim=1) @ self.weight[0] + self.bias[0]
        phi = self.basis(t)  # (batch, k)
        b = x.shape[0]
        if self.in_features <= self.out_features:
            # sum_i phi_i x W_i = [phi_1 x, ..., phi_k x] @ [W_1; ...; W_k]: the elementwise work
            # is on the (narrower) input side, then one (batch, k*in) @ (k*in, out) matmul.
            xk = (phi[:, :, None] * x[:, None, :]).reshape(b, -1)
            return xk @ self.weight.reshape(-1, self.out_features) + phi @ self.bias
        # narrower output: one (batch, in) @ (in, k*out) matmul, then the weighted sum
        y = (x @ self.weight.permute(1, 0, 2).reshape(self.in_features, -1)).view(
            b, self.n, self.out_features)
        return (phi[:, :, None] * y).sum(dim=1) + phi @ self.bias


_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "gelu": nn.GELU,
                "silu": nn.SiLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


class MLPField(nn.Module):
    """f(t, h) = W_L(t) sigma(... sigma(W_1(t) h)) on vector states `(batch, dim)`.

    **Arguments:**

    - `dim`: state size.
    - `hidden`: hidden width; `depth`: number of linear layers (>= 1).
    - `time`: time dependence (see :class:`TimeLinear`); `n_basis`, `t1` as there.
    - `activation`: `"tanh"` (default: smooth, bounded, good for adaptive solvers), `"relu"`,
      `"softplus"`, `"gelu"`, `"silu"`.
    - `scale`: output multiplier (a smaller initial vector field keeps early training stable).

    **Returns:** `field(t, h)` -> `(batch, dim)`; `t` is a scalar or `(batch,)`.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, time: str = "concat",
                 n_basis: int = 4, t1: float = 1.0, activation: str = "tanh", scale: float = 1.0):
        super().__init__()
        if int(depth) != depth or depth < 1:
            raise ValueError(f"MLPField: depth must be a positive integer, got {depth}")
        if dim < 1 or hidden < 1:
            raise ValueError(f"MLPField: dim and hidden must be positive, got {dim}, {hidden}")
        sizes = [dim] + [hidden] * (depth - 1) + [dim]
        self.layers = nn.ModuleList(
            TimeLinear(a, b, time=time, n_basis=n_basis, t1=t1) for a, b in zip(sizes, sizes[1:]))
        self.act = _activation(activation)
        self.dim, self.scale = dim, float(scale)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if h.dim() != 2 or h.shape[1] != self.dim:
            raise ValueError(f"MLPField: state must have shape (batch, {self.dim}), got "
                             f"{tuple(h.shape)}")
        t = _check_time(t, h.shape[0], h)
        x = h
        for i, layer in enumerate(self.layers):
            x = layer(t, x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return self.scale * x


class ConvField(nn.Module):
    """f(t, h) for image feature maps `(batch, channels, H, W)`: two 3x3 convolutions, with t
    appended as a constant input channel (the convolutional neural-ODE block of Chen et al. 2018)
    and group normalisation before each convolution.

    **Arguments:** `channels`; `hidden` channels (default = `channels`); `groups` for GroupNorm
    (must divide both); `activation` as for :class:`MLPField`.

    **Returns:** `field(t, h)` -> `(batch, channels, H, W)`.
    """

    def __init__(self, channels: int, hidden: int | None = None, groups: int = 1,
                 activation: str = "relu"):
        super().__init__()
        hidden = channels if hidden is None else hidden
        if channels % groups or hidden % groups:
            raise ValueError(f"ConvField: groups={groups} must divide channels={channels} and "
                             f"hidden={hidden}")
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels + 1, hidden, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, hidden)
        self.conv2 = nn.Conv2d(hidden + 1, channels, 3, padding=1)
        self.act = _activation(activation)
        self.channels = channels

    @staticmethod
    def _with_time(t: Tensor, x: Tensor) -> Tensor:
        tt = t.view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, tt], dim=1)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if h.dim() != 4 or h.shape[1] != self.channels:
            raise ValueError(f"ConvField: state must have shape (batch, {self.channels}, H, W), "
                             f"got {tuple(h.shape)}")
        t = _check_time(t, h.shape[0], h)
        x = self.conv1(self._with_time(t, self.act(self.norm1(h))))
        return self.conv2(self._with_time(t, self.act(self.norm2(x))))


class TransformerField(nn.Module):
    """The vector field of a pre-norm Transformer block on token sequences `(batch, n, dim)`:

    a = Attn(LN(h) + e(t)),  f(t, h) = a + MLP(LN(h + a) + e(t)),

    so that one forward-Euler step of size 1 is exactly the pre-norm block
    h + Attn(LN h) followed by + MLP(LN .) (Lu et al. 2019, "Understanding and improving
    Transformer from a multi-particle dynamic system point of view"). e(t) is a learned linear
    time embedding (zero at t = 0).

    **Arguments:** `dim`; `heads` (must divide `dim`); `mlp_ratio` for the MLP width.

    **Returns:** `field(t, h)` -> `(batch, n, dim)`.
    """

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"TransformerField: heads={heads} must divide dim={dim}")
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.time_embed = nn.Parameter(torch.zeros(dim))
        self.dim = dim

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if h.dim() != 3 or h.shape[2] != self.dim:
            raise ValueError(f"TransformerField: state must have shape (batch, tokens, {self.dim}),"
                             f" got {tuple(h.shape)}")
        t = _check_time(t, h.shape[0], h)
        e = t[:, None, None] * self.time_embed
        x = self.norm1(h) + e
        a = self.attn(x, x, x, need_weights=False)[0]
        return a + self.mlp(self.norm2(h + a) + e)
