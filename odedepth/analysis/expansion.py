"""Residual expansion and output-norm growth (Dherin & Munn, "On residual network depth", 2025).

A stack of residual modules x_k = x_{k-1} + lambda F_k(x_{k-1}) is, expanded in lambda, an
implicit ensemble of shallower networks:

- with linear modules F_i(x) = A_i x the expansion is exact,
  x_n = prod_{i=n..1} (I + lambda A_i) x = sum_k lambda^k sum_{i_1<...<i_k} A_{i_k}...A_{i_1} x,
  i.e. 2^n sub-networks ("paths") grouped in levels k of C(n, k) members with weight lambda^k
  (:func:`residual_paths`, :func:`level_terms`);
- with smooth modules, to second order,
  x_n = x + lambda sum_i F_i(x) + lambda^2 sum_{i<j} DF_j(x)[F_i(x)] + O(lambda^3)
  (:func:`second_order_expansion`, Jacobian-vector products by `torch.func.jvp`).

At initialisation with i.i.d. Gaussian weights (entries N(0, 1/d)) the squared norm grows as
E||h_L||^2 / ||h_0||^2 = (1 + c alpha^2)^L, c = 1 for a linear branch and 1/2 for a ReLU branch
(:func:`norm_growth`, :func:`expected_norm_growth`): alpha = 1 explodes, alpha = 1/sqrt(L) tends
to e^c, alpha = 1/L to 1, and a learnable scale initialised at 0 (SkipInit/ReZero) keeps 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = [
    "residual_paths",
    "level_terms",
    "residual_stack",
    "second_order_expansion",
    "branch_scale",
    "norm_growth",
    "expected_norm_growth",
]


def _check_matrices(As) -> Tensor:
    A = torch.stack(list(As)) if not isinstance(As, Tensor) else As
    if A.dim() != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(f"expected n square matrices of shape (n, d, d), got {tuple(A.shape)}")
    if not torch.isfinite(A).all():
        raise ValueError("matrices contain NaN or inf")
    return A


def residual_paths(As: Sequence[Tensor] | Tensor) -> Iterator[tuple[tuple[int, ...], Tensor]]:
    """Enumerate the 2^n sub-networks of the linear residual stack prod (I + A_i).

    **Arguments:**

    - `As`: `(n, d, d)` module matrices A_1..A_n (applied in this order).

    **Returns:** an iterator of `(subset, matrix)`: `subset` the increasing indices of the active
    modules, `matrix` the product A_{i_k} ... A_{i_1} (the identity for the empty path). The
    level of a path is `len(subset)`; its weight in the stack with branch scale lambda is
    lambda^level.
    """
    A = _check_matrices(As)
    n, d = A.shape[0], A.shape[1]
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    for k in range(n + 1):
        for subset in itertools.combinations(range(n), k):
            M = eye
            for i in subset:  # later modules act last: left-multiply
                M = A[i] @ M
            yield subset, M


def level_terms(As: Sequence[Tensor] | Tensor, x: Tensor | None = None) -> Tensor:
    """Sum of the level-k paths, E_k = sum_{i_1<...<i_k} A_{i_k} ... A_{i_1}, for k = 0..n.

    Computed by the recursion E_k^{(i)} = E_k^{(i-1)} + A_i E_{k-1}^{(i-1)} in O(n^2) products
    instead of enumerating 2^n paths; sum_k lambda^k E_k = prod (I + lambda A_i).

    **Arguments:**

    - `As`: `(n, d, d)` module matrices.
    - `x`: optional `(d,)` or `(batch, d)` input; if given, return E_k x instead of E_k.

    **Returns:** `(n + 1, d, d)`, or `(n + 1, *x.shape)` when `x` is given.
    """
    A = _check_matrices(As)
    n, d = A.shape[0], A.shape[1]
    E = torch.zeros(n + 1, d, d, dtype=A.dtype, device=A.device)
    E[0] = torch.eye(d, dtype=A.dtype, device=A.device)
    for i in range(n):
        # Update high levels first so that E[k-1] is still the previous module's value.
        E[1:i + 2] = E[1:i + 2] + A[i] @ E[0:i + 1]
    if x is None:
        return E
    if x.shape[-1] != d:
        raise ValueError(f"level_terms: x must end with dimension {d}, got {tuple(x.shape)}")
    return torch.einsum("kij,...j->k...i", E, x.to(A.dtype))


def residual_stack(branches: Sequence[Callable[[Tensor], Tensor]], x: Tensor, scale: float,
                   return_all: bool = False):
    """Run x_k = x_{k-1} + scale * F_k(x_{k-1}).

    **Arguments:**

    - `branches`: the residual branches F_1..F_n.
    - `x`: input state.
    - `scale`: branch scale lambda.
    - `return_all`: also return the list of all states x_0..x_n.

    **Returns:** x_n (and the list of states if `return_all`).
    """
    states = [x]
    for F in branches:
        x = x + scale * F(x)
        states.append(x)
    return (x, states) if return_all else x


def second_order_expansion(branches: Sequence[Callable[[Tensor], Tensor]], x: Tensor,
                           scale: float, order: int = 2) -> Tensor:
    """Truncated residual expansion of a stack of smooth modules around its input.

    x + lambda sum_i F_i(x) + lambda^2 sum_{i<j} DF_j(x)[F_i(x)]: the double sum is computed as
    sum_j DF_j(x)[S_{j-1}] with S_{j-1} = sum_{i<j} F_i(x), one Jacobian-vector product per module
    (`torch.func.jvp`). The remainder against the true stack is O(lambda^3).

    **Arguments:**

    - `branches`: differentiable modules F_1..F_n (same input and output shape).
    - `x`: input, any shape the branches accept.
    - `scale`: lambda.
    - `order`: 0, 1 or 2 (terms kept).

    **Returns:** the truncated expansion, shape of `x`.
    """
    if order not in (0, 1, 2):
        raise ValueError(f"second_order_expansion: order must be 0, 1 or 2, got {order}")
    if not math.isfinite(scale):
        raise ValueError(f"second_order_expansion: scale must be finite, got {scale}")
    out = x
    if order == 0 or len(branches) == 0:
        return out
    Fx = [F(x) for F in branches]
    out = out + scale * sum(Fx)
    if order == 1:
        return out
    second = torch.zeros_like(x)
    running = torch.zeros_like(x)  # S_{j-1}
    for j, F in enumerate(branches):
        if j > 0:
            _, jv = torch.func.jvp(F, (x,), (running,))
            second = second + jv
        running = running + Fx[j]
    return out + scale ** 2 * second


def branch_scale(rule: str | float, depth: int) -> float:
    """Branch scale lambda for `depth` residual modules.

    **Arguments:**

    - `rule`: `"1"`, `"1/sqrt(L)"` (also `"sqrt"`), `"1/L"` (also `"linear"`), `"learnable"`
      (a learnable scalar initialised at 0, i.e. SkipInit/ReZero: 0 at initialisation), or a number.
    - `depth`: number of modules L (>= 1).

    **Returns:** the float lambda.
    """
    if int(depth) != depth or depth < 1:
        raise ValueError(f"branch_scale: depth must be a positive int, got {depth}")
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if not math.isfinite(rule):
            raise ValueError(f"branch_scale: scale must be finite, got {rule}")
        return float(rule)
    table = {"1": 1.0, "one": 1.0, "1/sqrt(l)": 1 / math.sqrt(depth), "sqrt": 1 / math.sqrt(depth),
             "1/l": 1.0 / depth, "linear": 1.0 / depth, "learnable": 0.0, "skipinit": 0.0,
             "rezero": 0.0}
    key = str(rule).lower().replace(" ", "")
    if key not in table:
        raise ValueError(f"branch_scale: unknown rule {rule!r}; use '1', '1/sqrt(L)', '1/L', "
                         "'learnable' or a number")
    return table[key]


def expected_norm_growth(depth: int, scale: float, branch: str = "linear") -> float:
    """Closed form E||h_L||^2 / ||h_0||^2 = (1 + c lambda^2)^L at Gaussian initialisation.

    **Arguments:**

    - `depth`: L.
    - `scale`: lambda.
    - `branch`: `"linear"` (c = 1) or `"relu"` (c = 1/2).

    **Returns:** the float ratio.
    """
    c = _branch_constant(branch)
    return (1.0 + c * scale ** 2) ** depth


def _branch_constant(branch: str) -> float:
    if branch == "linear":
        return 1.0
    if branch == "relu":
        return 0.5
    raise ValueError(f"branch must be 'linear' or 'relu', got {branch!r}")


@torch.no_grad()
def norm_growth(
    depth: int,
    scale: str | float,
    *,
    width: int = 64,
    branch: str = "linear",
    trials: int = 100,
    shared: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Monte Carlo squared-norm growth of h_{k+1} = h_k + lambda V sigma(W h_k) at initialisation.

    V and W have i.i.d. N(0, 1/d) entries (fresh per module, or one shared pair if `shared`);
    sigma is the identity (`branch="linear"`) or ReLU; ||h_0|| = 1 in a random direction. Trials
    run as a batch of independent networks.

    **Arguments:**

    - `depth`: L, number of modules.
    - `scale`: lambda or a rule accepted by :func:`branch_scale`.
    - `width`: d.
    - `branch`: `"linear"` or `"relu"`.
    - `trials`: independent networks.
    - `shared`: reuse one module's weights at every depth (correlated init).
    - `generator`: random source.

    **Returns:** `(mean, stderr)`, each `(depth + 1,)`: the mean over trials of ||h_k||^2/||h_0||^2
    for k = 0..L and its standard error.
    """
    lam = branch_scale(scale, depth)
    _branch_constant(branch)
    if int(width) != width or width < 1 or int(trials) != trials or trials < 2:
        raise ValueError(f"norm_growth: width >= 1 and trials >= 2 must be ints, got {width}, {trials}")
    d, T = int(width), int(trials)
    std = 1.0 / math.sqrt(d)

    def draw():
        return torch.randn(T, d, d, generator=generator, dtype=dtype, device=device) * std

    h = torch.randn(T, d, generator=generator, dtype=dtype, device=device)
    h = h / h.norm(dim=1, keepdim=True)
    ratios = [torch.ones(T, dtype=dtype, device=device)]
    if shared:
        V, W = draw(), draw()
    for _ in range(depth):
        if not shared:
            V, W = draw(), draw()
        z = torch.einsum("tij,tj->ti", W, h)
        if branch == "relu":
            z = z.clamp_min(0)
        h = h + lam * torch.einsum("tij,tj->ti", V, z)
        ratios.append(h.pow(2).sum(dim=1))
    R = torch.stack(ratios, dim=1)  # (T, L+1)
    return R.mean(dim=0), R.std(dim=0) / math.sqrt(T)
