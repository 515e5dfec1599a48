"""Discrete <-> continuous depth.

An L-block residual network h_{k+1} = h_k + (1/L) F_k(h_k) whose branch weights are samples of a
smooth function of depth, F_k = f(t_k, .) with t_k = k/L, is forward Euler with step 1/L on the
ODE dh/dt = f(t, h), t in [0, 1]. Its output converges to the ODE solution h(1) with error O(1/L);
two-stage residual blocks built from the midpoint or Heun (explicit trapezoid) rule converge as
O(1/L^2) (Haber & Ruthotto 2017; Chen et al. 2018; REFERENCES.md, "Euler limit").

- :func:`to_discrete` turns a time-dependent field into L residual blocks (Euler, midpoint or
  Heun), copying the weights W(t) at the stage times when the field exposes them
  (:class:`BasisField`), else calling the field at fixed times (any `f(t, h)`, e.g.
  `odedepth.flows.MLPField`);
- :func:`to_continuous` turns residual blocks back into a field whose weights interpolate the
  blocks' weights in t (piecewise constant or piecewise linear), such that Euler with L steps on it
  reproduces the blocks exactly;
- :func:`convergence_study` measures ||h_L - h(t1)|| against L and fits the observed order, with
  the reference solution from scipy's DOP853 at tight tolerances (and `solvers.ode.solve` once it
  is available, as a peer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "BasisField",
    "FieldSnapshot",
    "ResidualBlock",
    "ResidualNetwork",
    "InterpolatedField",
    "to_discrete",
    "to_continuous",
    "ConvergenceResult",
    "convergence_study",
    "solve_reference",
]

SCHEMES = ("euler", "midpoint", "heun")


# ------------------------------------------------------------------------------------- fields
class BasisField(nn.Module):
    """A minimal time-dependent field f(t, h) = tanh(W(t) h + b(t)) with polynomial weights.

    W(t) = sum_{i<n} P_i(2t/t1 - 1) W_i and likewise b(t), P_i the Legendre polynomials: smooth in
    depth, as the Euler-limit argument requires. Exposes its weights at any t (:meth:`weights`)
    so that :func:`to_discrete` can copy them into independent blocks.

    **Arguments:**

    - `dim`: state dimension d.
    - `n_basis`: number of Legendre polynomials (1 = autonomous).
    - `t1`: depth horizon.
    - `scale`: standard deviation of the entries of W_i times sqrt(d) (1 = variance-preserving).
    - `generator`, `dtype`: initialisation controls.
    """

    def __init__(self, dim: int, n_basis: int = 3, t1: float = 1.0, scale: float = 1.0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"BasisField: dim must be a positive int, got {dim}")
        if int(n_basis) != n_basis or n_basis < 1:
            raise ValueError(f"BasisField: n_basis must be a positive int, got {n_basis}")
        if not (math.isfinite(t1) and t1 > 0):
            raise ValueError(f"BasisField: t1 must be positive and finite, got {t1}")
        self.dim, self.n_basis, self.t1 = int(dim), int(n_basis), float(t1)
        std = scale / math.sqrt(dim)
        self.W = nn.Parameter(torch.randn(n_basis, dim, dim, generator=generator, dtype=dtype) * std)
        self.b = nn.Parameter(0.5 * torch.randn(n_basis, dim, generator=generator, dtype=dtype))

    def basis(self, t: float) -> Tensor:
        x = 2.0 * min(max(float(t) / self.t1, 0.0), 1.0) - 1.0
        p = [1.0, x]
        for n in range(1, self.n_basis - 1):  # Bonnet's recursion
            p.append(((2 * n + 1) * x * p[n] - n * p[n - 1]) / (n + 1))
        return torch.tensor(p[: self.n_basis], dtype=self.W.dtype, device=self.W.device)

    def weights(self, t: float) -> dict[str, Tensor]:
        """The weights {"W": (d, d), "b": (d,)} at depth t (differentiable in W_i, b_i)."""
        phi = self.basis(t)
        return {"W": torch.einsum("i,ijk->jk", phi, self.W), "b": phi @ self.b}

    @staticmethod
    def evaluate(params: dict[str, Tensor], h: Tensor) -> Tensor:
        """The branch with given weights: tanh(h W^T + b)."""
        return torch.tanh(h @ params["W"].T + params["b"])

    def forward(self, t, h: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        if t.numel() == 1:
            return self.evaluate(self.weights(float(t)), h)
        # Per-sample times (a solver with per-sample steps): group equal times.
        out = torch.empty_like(h)
        for tv in torch.unique(t):
            m = t == tv
            out[m] = self.evaluate(self.weights(float(tv)), h[m])
        return out


class FieldSnapshot(nn.Module):
    """The branch F = f(t, .) frozen at one depth.

    With a field exposing `weights(t)` / `evaluate(params, h)` (e.g. :class:`BasisField`), the
    weights W(t) are copied into this module's own parameters (independent blocks, as in a
    ResNet); otherwise the snapshot calls `field(t, h)` and shares the field's parameters.
    """

    def __init__(self, fld: Callable, t: float, copy: bool = True):
        super().__init__()
        self.t = float(t)
        self._evaluate = None
        if copy and hasattr(fld, "weights") and hasattr(fld, "evaluate"):
            self._evaluate = fld.evaluate
            self.params = nn.ParameterDict(
                {k: nn.Parameter(v.detach().clone()) for k, v in fld.weights(self.t).items()})
        else:
            self.field = fld

    def forward(self, h: Tensor) -> Tensor:
        if self._evaluate is not None:
            return self._evaluate(dict(self.params.items()), h)
        return self.field(torch.as_tensor(self.t, dtype=h.dtype, device=h.device), h)


# ------------------------------------------------------------------------------------ blocks
class ResidualBlock(nn.Module):
    """One residual block = one step of an explicit Runge-Kutta scheme of size `dt`.

    - `"euler"`: h + dt F_0(h), F_0 = f(t_k, .);
    - `"midpoint"`: h + dt F_1(h + dt/2 F_0(h)), F_1 = f(t_k + dt/2, .);
    - `"heun"`: h + dt/2 (F_0(h) + F_1(h + dt F_0(h))), F_1 = f(t_k + dt, .).

    **Arguments:**

    - `branches`: the stage branches (1 for Euler, 2 for midpoint/Heun).
    - `dt`: the branch scale (step size); 1/L for L blocks on [0, 1].
    - `scheme`: one of `"euler"`, `"midpoint"`, `"heun"`.
    """

    def __init__(self, branches: Sequence[nn.Module], dt: float, scheme: str = "euler"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"ResidualBlock: scheme must be one of {SCHEMES}, got {scheme!r}")
        need = 1 if scheme == "euler" else 2
        if len(branches) != need:
            raise ValueError(f"ResidualBlock: scheme {scheme!r} needs {need} branch(es), got "
                             f"{len(branches)}")
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"ResidualBlock: dt must be positive and finite, got {dt}")
        self.branches = nn.ModuleList(branches)
        self.dt, self.scheme = float(dt), scheme

    def forward(self, h: Tensor) -> Tensor:
        dt = self.dt
        k1 = self.branches[0](h)
        if self.scheme == "euler":
            return h + dt * k1
        if self.scheme == "midpoint":
            return h + dt * self.branches[1](h + 0.5 * dt * k1)
        return h + 0.5 * dt * (k1 + self.branches[1](h + dt * k1))


class ResidualNetwork(nn.Module):
    """A stack of :class:`ResidualBlock` (the discrete network made from a field).

    `forward(h, return_states=False)` returns h_L, or `(h_L, [h_0, ..., h_L])`.
    """

    def __init__(self, blocks: Sequence[ResidualBlock], t1: float = 1.0):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.t1 = float(t1)

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, h: Tensor, return_states: bool = False):
        states = [h]
        for b in self.blocks:
            h = b(h)
            if return_states:
                states.append(h)
        return (h, states) if return_states else h


def to_discrete(continuous_field: Callable, L: int, scheme: str = "euler", *, t0: float = 0.0,
                t1: float = 1.0, copy: bool = True) -> ResidualNetwork:
    """L residual blocks that integrate dh/dt = f(t, h) from t0 to t1 with one RK step each.

    **Arguments:**

    - `continuous_field`: `f(t, h)`; a field with `weights(t)`/`evaluate` (:class:`BasisField`)
      has its weights copied at the stage times (independent blocks), any other callable is
      called at fixed times.
    - `L`: number of blocks (branch scale (t1 - t0)/L).
    - `scheme`: `"euler"`, `"midpoint"` or `"heun"`.
    - `t0`, `t1`: depth interval.
    - `copy`: copy weights when possible (else share the field's parameters).

    **Returns:** a :class:`ResidualNetwork`.
    """
    if not callable(continuous_field):
        raise TypeError(f"to_discrete: field must be callable f(t, h), got "
                        f"{type(continuous_field).__name__}")
    if int(L) != L or L < 1:
        raise ValueError(f"to_discrete: L must be a positive int, got {L}")
    if scheme not in SCHEMES:
        raise ValueError(f"to_discrete: scheme must be one of {SCHEMES}, got {scheme!r}")
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"to_discrete: need finite t0 < t1, got {t0}, {t1}")
    L = int(L)
    dt = (t1 - t0) / L
    blocks = []
    for k in range(L):
        tk = t0 + k * dt
        if scheme == "euler":
            times = [tk]
        elif scheme == "midpoint":
            times = [tk, tk + 0.5 * dt]
        else:
            times = [tk, tk + dt]
        blocks.append(ResidualBlock([FieldSnapshot(continuous_field, t, copy) for t in times], dt,
                                    scheme))
    return ResidualNetwork(blocks, t1=t1)


# ------------------------------------------------------------------------------- continuous
class InterpolatedField(nn.Module):
    """f(t, h) = F(h; theta(t)), theta(t) interpolating per-block weights theta_k at t_k = t0 + k dt.

    `"constant"`: theta(t) = theta_k on [t_k, t_{k+1}); `"linear"`: linear between nodes, constant
    after the last node. Both give theta(t_k) = theta_k, so Euler with step dt on this field
    reproduces the blocks exactly. The field holds references to the blocks' parameters (training
    the field trains the blocks).

    **Arguments:**

    - `branches`: L modules of identical architecture (the residual branches F_k).
    - `dt`: node spacing; `t0`: first node.
    - `gain`: multiplies the branch output (block h + alpha F_k(h) gives gain alpha/dt).
    - `interpolation`: `"constant"` or `"linear"`.
    """

    def __init__(self, branches: Sequence[nn.Module], dt: float, t0: float = 0.0, gain: float = 1.0,
                 interpolation: str = "constant"):
        super().__init__()
        if interpolation not in ("constant", "linear"):
            raise ValueError(f"InterpolatedField: interpolation must be 'constant' or 'linear', "
                             f"got {interpolation!r}")
        self.branches = nn.ModuleList(branches)
        names = [sorted(n for n, _ in b.named_parameters()) for b in self.branches]
        shapes = [[tuple(p.shape) for _, p in sorted(b.named_parameters())] for b in self.branches]
        if any(n != names[0] for n in names) or any(s != shapes[0] for s in shapes):
            raise ValueError("InterpolatedField: all branches must have the same parameter names "
                             "and shapes (identical architecture)")
        self.dt, self.t0, self.gain, self.interpolation = float(dt), float(t0), float(gain), interpolation

    def params_at(self, t: float) -> dict[str, Tensor]:
        L = len(self.branches)
        s = (float(t) - self.t0) / self.dt
        # Snap to a node when within rounding of it, so that Euler's t_k pick block k.
        r = round(s)
        if abs(s - r) < 1e-9:
            s = float(r)
        k = min(max(int(math.floor(s)), 0), L - 1)
        pk = dict(self.branches[k].named_parameters())
        if self.interpolation == "constant" or k == L - 1 or s <= 0:
            return pk
        w = s - k
        pn = dict(self.branches[k + 1].named_parameters())
        return {n: (1 - w) * pk[n] + w * pn[n] for n in pk}

    def forward(self, t, h: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        tmpl = self.branches[0]
        if t.numel() == 1:
            return self.gain * functional_call(tmpl, self.params_at(float(t)), (h,))
        out = torch.empty_like(h)
        for tv in torch.unique(t):
            m = t == tv
            out[m] = self.gain * functional_call(tmpl, self.params_at(float(tv)), (h[m],))
        return out


def to_continuous(blocks: Sequence[nn.Module] | ResidualNetwork, *, scale: float | None = None,
                  interpolation: str = "constant", t0: float = 0.0, t1: float = 1.0
                  ) -> InterpolatedField:
    """A time-dependent field whose Euler discretisation with L steps is the given blocks.

    **Arguments:**

    - `blocks`: Euler :class:`ResidualBlock` s (or a :class:`ResidualNetwork` of them), or plain
      branch modules F_k of identical architecture for blocks h + scale F_k(h).
    - `scale`: the branch scale alpha of plain branches (default 1/L); ignored for Euler blocks,
      whose scale is their `dt`.
    - `interpolation`: `"constant"` or `"linear"` interpolation of the weights in t.
    - `t0`, `t1`: the depth interval the L blocks cover.

    **Returns:** an :class:`InterpolatedField` f(t, h) on [t0, t1].
    """
    if isinstance(blocks, ResidualNetwork):
        blocks = list(blocks.blocks)
    blocks = list(blocks)
    if not blocks:
        raise ValueError("to_continuous: need at least one block")
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"to_continuous: need finite t0 < t1, got {t0}, {t1}")
    L = len(blocks)
    dt = (t1 - t0) / L
    if all(isinstance(b, ResidualBlock) for b in blocks):
        if any(b.scheme != "euler" for b in blocks):
            raise ValueError("to_continuous: only Euler blocks map to a field one-to-one; got "
                             f"schemes {sorted({b.scheme for b in blocks})}")
        alphas = {b.dt for b in blocks}
        if len(alphas) != 1:
            raise ValueError(f"to_continuous: blocks have different step sizes {sorted(alphas)}")
        branches = [b.branches[0] for b in blocks]
        alpha = alphas.pop()
    elif any(isinstance(b, ResidualBlock) for b in blocks):
        raise ValueError("to_continuous: mix of ResidualBlock and plain branches")
    else:
        branches = blocks
        alpha = 1.0 / L if scale is None else float(scale)
        if not math.isfinite(alpha):
            raise ValueError(f"to_continuous: scale must be finite, got {scale}")
    return InterpolatedField(branches, dt=dt, t0=t0, gain=alpha / dt, interpolation=interpolation)


# ------------------------------------------------------------------------------ convergence
def solve_reference(fld: Callable, h0: Tensor, t0: float = 0.0, t1: float = 1.0,
                    rtol: float = 1e-12, atol: float = 1e-12, backend: str = "auto") -> Tensor:
    """h(t1) for dh/dt = f(t, h) at tight tolerances (float64 when the field is).

    **Arguments:**

    - `fld`, `h0` `(batch, ...)`, `t0`, `t1`, `rtol`, `atol`.
    - `backend`: `"solvers"` (this package's batched Dopri8, :func:`solvers.ode.solve`),
      `"scipy"` (`solve_ivp`, DOP853, the whole batch as one system: the field is per-sample so
      this equals solving each sample alone), or `"auto"` (solvers, else scipy).

    **Returns:** a tensor like `h0`.
    """
    if backend not in ("auto", "solvers", "scipy"):
        raise ValueError(f"solve_reference: backend must be 'auto', 'solvers' or 'scipy', got "
                         f"{backend!r}")
    dtype = _field_dtype(fld, h0)
    h0 = h0.detach().to(dtype)
    if backend in ("auto", "solvers"):
        try:
            from solvers.ode import solve
        except ImportError:
            if backend == "solvers":
                raise
        else:
            with torch.no_grad():
                sol = solve(fld, h0, (t0, t1), method="dopri8", rtol=rtol, atol=atol,
                            max_steps=100_000)
            return sol.y.detach()
    from scipy.integrate import solve_ivp

    shape = h0.shape

    def rhs(t, y):
        with torch.no_grad():
            h = torch.from_numpy(y).to(dtype).reshape(shape)
            return fld(torch.tensor(t, dtype=dtype), h).double().reshape(-1).numpy()

    sol = solve_ivp(rhs, (t0, t1), h0.double().reshape(-1).cpu().numpy(),
                    method="DOP853", rtol=rtol, atol=atol)
    if sol.status != 0:
        raise RuntimeError(f"solve_reference: DOP853 failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(dtype)


def _field_dtype(fld, h0):
    p = next(iter(fld.parameters()), None) if isinstance(fld, nn.Module) else None
    return p.dtype if p is not None else h0.dtype


@dataclass
class ConvergenceResult:
    """Errors ||h_L - h(t1)|| / ||h(t1)|| per scheme and L, and the fitted orders.

    - `Ls`: the depths.
    - `errors`: scheme -> list of relative errors (one per L).
    - `orders`: scheme -> observed order, minus the slope of log error against log L.
    - `reference`: h(t1).
    """

    Ls: list[int]
    errors: dict[str, list[float]] = field(default_factory=dict)
    orders: dict[str, float] = field(default_factory=dict)
    reference: Tensor | None = None


def convergence_study(fld: Callable, h0: Tensor, Ls: Sequence[int],
                      schemes: Sequence[str] = SCHEMES, *, t0: float = 0.0, t1: float = 1.0,
                      reference: Tensor | None = None) -> ConvergenceResult:
    """Measure how the L-block networks of :func:`to_discrete` converge to the ODE solution.

    **Arguments:**

    - `fld`: the field f(t, h).
    - `h0`: `(batch, d)` initial states.
    - `Ls`: increasing block counts (at least two).
    - `schemes`: which block types to build.
    - `t0`, `t1`: depth interval.
    - `reference`: h(t1) if already known, else :func:`solve_reference` (Dopri8 of
      :mod:`solvers.ode`, or scipy's DOP853, tolerances 1e-12).

    **Returns:** a :class:`ConvergenceResult`; the order is ~1 for Euler, ~2 for midpoint/Heun.
    """
    Ls = [int(L) for L in Ls]
    if len(Ls) < 2 or any(L < 1 for L in Ls) or len(set(Ls)) != len(Ls):
        raise ValueError(f"convergence_study: need at least two distinct positive Ls, got {Ls}")
    for s in schemes:
        if s not in SCHEMES:
            raise ValueError(f"convergence_study: unknown scheme {s!r}; use {SCHEMES}")
    if not isinstance(h0, Tensor) or not torch.isfinite(h0).all():
        raise ValueError("convergence_study: h0 must be a finite tensor")
    dtype = _field_dtype(fld, h0)
    h0 = h0.to(dtype)
    ref = solve_reference(fld, h0, t0, t1) if reference is None else reference.double()
    res = ConvergenceResult(Ls=Ls, reference=ref)
    with torch.no_grad():
        for s in schemes:
            errs = []
            for L in Ls:
                out = to_discrete(fld, L, s, t0=t0, t1=t1, copy=False)(h0).double()
                errs.append(((out - ref).norm() / ref.norm()).item())
            res.errors[s] = errs
            slope = np.polyfit(np.log(Ls), np.log(errs), 1)[0]
            res.orders[s] = float(-slope)
    return res
