"""Spatial meshes: uniform or sinh-stretched around a point, per problem of the batch.

A sinh mesh (Tavella & Randall 2000, ch. 5) maps a uniform u in [0, 1] through
x(u) = c + alpha sinh(A + (B - A) u), concentrating nodes near c with spacing ratio about
cosh(B) between the ends and the centre. Both meshes put the concentration point exactly on a
node when one is given: the map is built in two pieces meeting at c (the spacing changes by a
factor 1 + O(1/nx) there, which keeps the 3-point stencils second order). A payoff kink on a
node is what makes the observed convergence of option values regular.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["UniformMesh", "SinhMesh", "build_mesh"]


@dataclass(frozen=True)
class UniformMesh:
    """Equally spaced nodes (with the problem's centre on a node when it has one)."""


@dataclass(frozen=True)
class SinhMesh:
    """Nodes concentrated near the problem's centre.

    **Arguments:** `intensity`: alpha / (x_max - x_min); smaller concentrates more (0.1 puts about
    2x more nodes per unit length at the centre than a uniform mesh on a ±5σ√T domain).
    """

    intensity: float = 0.1

    def __post_init__(self):
        if not (self.intensity > 0):
            raise ValueError(f"SinhMesh intensity must be positive, got {self.intensity}")


def build_mesh(problem, nx: int, mesh, dtype=torch.float64, device=None) -> Tensor:
    """Nodes `(B, nx)` for `problem` (strictly increasing, ends at x_min and x_max).

    **Arguments:** `problem`, `nx` >= 3, `mesh`: `"auto"` (sinh when the problem has a centre,
    else uniform), `"uniform"`, `"sinh"`, a :class:`UniformMesh` / :class:`SinhMesh`, or a tensor
    of nodes `(nx,)` or `(B, nx)` (checked strictly increasing, with `nx` nodes; its first and
    last nodes are where the boundary conditions apply, in place of x_min and x_max).
    """
    bsz = problem.batch_size
    if isinstance(mesh, Tensor):
        x = mesh.to(dtype=dtype, device=device)
        if x.dim() == 1:
            x = x.unsqueeze(0).expand(bsz, -1)
        if x.dim() != 2 or x.shape[0] != bsz or x.shape[1] < 3:
            raise ValueError(f"mesh tensor must have shape (nx,) or (batch={bsz}, nx) with nx >= 3; "
                             f"got {tuple(mesh.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("mesh contains NaN or infinite values")
        if not bool((x[:, 1:] > x[:, :-1]).all()):
            raise ValueError("mesh must be strictly increasing (got a non-monotone mesh)")
        if x.shape[1] != nx:
            raise ValueError(f"the mesh tensor has {x.shape[1]} nodes but nx = {nx}: pass "
                             f"nx={x.shape[1]} with it")
        return x.contiguous()
    if mesh == "auto":
        mesh = SinhMesh() if problem.center is not None else UniformMesh()
    elif mesh == "uniform":
        mesh = UniformMesh()
    elif mesh == "sinh":
        mesh = SinhMesh()
    if not isinstance(mesh, UniformMesh | SinhMesh):
        raise ValueError(f"mesh must be 'auto', 'uniform', 'sinh', a UniformMesh/SinhMesh or a "
                         f"tensor of nodes; got {mesh!r}")
    x0 = problem.x_min.to(dtype=dtype, device=device)
    x1 = problem.x_max.to(dtype=dtype, device=device)
    u = torch.linspace(0.0, 1.0, nx, dtype=dtype, device=device).unsqueeze(0).expand(bsz, -1)
    c = None if problem.center is None else problem.center.to(dtype=dtype, device=device)
    if c is None:
        c = 0.5 * (x0 + x1)
        snap = False
    else:
        snap = True
    if isinstance(mesh, UniformMesh):
        lo = lambda w: c + (x0 - c) * w  # noqa: E731 - tiny maps, w = 1 at x_min, 0 at c
        hi = lambda w: c + (x1 - c) * w  # noqa: E731
        frac_c = (c - x0) / (x1 - x0)
    else:
        alpha = mesh.intensity * (x1 - x0)
        A = torch.asinh((x0 - c) / alpha)
        Bv = torch.asinh((x1 - c) / alpha)
        lo = lambda w: c + alpha * torch.sinh(A * w)  # noqa: E731
        hi = lambda w: c + alpha * torch.sinh(Bv * w)  # noqa: E731
        frac_c = -A / (Bv - A)
    if not snap:
        if isinstance(mesh, UniformMesh):
            return (x0 + (x1 - x0) * u).contiguous()
        return (c + alpha * torch.sinh(A + (Bv - A) * u)).contiguous()
    # One node on the centre, per problem: k = nearest node index of the centre (rounded with a
    # small bias so that equal problems get equal meshes whatever the batch around them).
    k = torch.floor(frac_c * (nx - 1) + 0.5 + 1e-9).clamp(1, nx - 2)
    frac = k / (nx - 1)
    left = lo(torch.clamp(1.0 - u / frac, min=0.0))
    right = hi(torch.clamp((u - frac) / (1.0 - frac), min=0.0))
    x = torch.where(u <= frac, left, right)
    x[:, 0:1], x[:, -1:] = x0, x1
    if not bool((x[:, 1:] > x[:, :-1]).all()):
        raise ValueError("could not build a monotone mesh (is the centre inside the domain?)")
    return x.contiguous()
