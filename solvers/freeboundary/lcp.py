"""Batched tridiagonal solves and linear complementarity problems (LCPs).

Every array here is *node-major*: shape `(n, B)` for n unknowns of B independent problems, so that
the sequential sweeps over nodes touch contiguous rows and are vectorised over the batch. A
tridiagonal matrix is given by its sub-diagonal `l` (`l[0]` unused), diagonal `d` and
super-diagonal `u` (`u[-1]` unused).

The discrete obstacle problem of one time step is the LCP

    M v >= b,   v >= g,   (M v - b) . (v - g) = 0,

with M an M-matrix (non-positive off-diagonals, diagonally dominant) for which it has a unique
solution (Cryer 1971). Solvers:

- :func:`brennan_schwartz`: one UL elimination plus a projected substitution (Brennan & Schwartz
  1977; Jaillet, Lamberton & Lapeyre 1990 prove it exact when the exercise region is one interval
  touching the left end). O(n) per solve, the factors reusable across steps.
- :func:`psor`: projected successive over-relaxation (Cryer 1971) in red-black order, so that each
  half sweep is one vectorised update; iterates to a tolerance.
- :func:`policy_iteration`: Howard's algorithm (Howard 1960; Bokanowski, Maroso & Zidani 2009):
  alternate a tridiagonal solve for a fixed stop/continue policy and a policy improvement;
  exact after finitely many iterations (at most n + 1 for an M-matrix).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import lapack
from torch import Tensor

__all__ = ["ul_factor", "ul_solve", "thomas", "matvec", "brennan_schwartz", "psor",
           "policy_iteration", "LCPConvergenceError"]


class LCPConvergenceError(RuntimeError):
    """An iterative LCP solver (PSOR, policy iteration) did not converge."""


# A single problem on the CPU is dominated by torch's per-operation overhead (a few microseconds
# per row in a sweep); there the sweeps run in LAPACK (dgtsv) and plain floats instead. Same
# algorithms, same results up to rounding.
def _single_cpu(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dim() == 2 and t.shape[1] == 1 and t.dtype == torch.float64


_ZEROS: dict[int, np.ndarray] = {}


def _zeros(n: int) -> np.ndarray:
    if n not in _ZEROS:
        _ZEROS[n] = np.zeros(max(n, 0))
    return _ZEROS[n]


def _gtsv(dl: np.ndarray, d: np.ndarray, du: np.ndarray, b: np.ndarray) -> np.ndarray:
    if d.shape[0] == 1:
        return b / d
    *_, x, info = lapack.dgtsv(dl, d, du, b)
    if info != 0:
        raise ZeroDivisionError(f"singular tridiagonal matrix (LAPACK dgtsv info={info})")
    return x


def matvec(l: Tensor, d: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Tridiagonal product M v for node-major `(n, B)` arrays."""
    out = d * v
    out[1:] += l[1:] * v[:-1]
    out[:-1] += u[:-1] * v[1:]
    return out


def ul_factor(l: Tensor, d: Tensor, u: Tensor, *,
              out: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Factor M = U L eliminating from the last row upwards (UL, not LU).

    Eliminating upwards leaves a lower bidiagonal system solved from the first row downwards;
    that forward substitution is where Brennan–Schwartz projects on the obstacle, which is why
    a put (exercise at the left end) uses UL. A call is the mirror image (see :func:`solve`).

    **Arguments:** the matrix `l, d, u` `(n, B)`; `out`: optional arrays to fill (reused memory).

    **Returns:** `(neg_m, inv_dd, a)`: the multipliers (negated), the inverse pivots and the
    scaled sub-diagonal `a_i = -l_i / dd_i`; each `(n, B)`.
    """
    n = d.shape[0]
    if _single_cpu(d):
        lf, df, uf = l[:, 0].tolist(), d[:, 0].tolist(), u[:, 0].tolist()
        ddf, nmf = [0.0] * n, [0.0] * n
        cur = ddf[n - 1] = df[n - 1]
        for i in range(n - 2, -1, -1):
            m = uf[i] / cur
            nmf[i] = -m
            cur = ddf[i] = df[i] - m * lf[i + 1]
        dd = torch.tensor(ddf, dtype=d.dtype).unsqueeze(1)
        neg_m = torch.tensor(nmf, dtype=d.dtype).unsqueeze(1)
        if not bool((dd != 0).all()):
            raise ZeroDivisionError("singular tridiagonal matrix (zero pivot)")
        inv = 1.0 / dd
        a = -l * inv
        a[0] = 0.0
        return neg_m, inv, a
    if out is not None:
        neg_m, dd, a = out
    else:
        neg_m, dd, a = torch.empty_like(d), torch.empty_like(d), torch.empty_like(d)
    neg_m[n - 1] = 0.0
    dd[n - 1] = d[n - 1]
    for i in range(n - 2, -1, -1):  # in place, no temporaries: large batches are memory bound
        torch.div(u[i], dd[i + 1], out=neg_m[i])
        neg_m[i].neg_()
        torch.addcmul(d[i], neg_m[i], l[i + 1], out=dd[i])
    if not bool((dd != 0).all()):
        raise ZeroDivisionError("singular tridiagonal matrix (zero pivot)")
    inv = dd.reciprocal_()
    torch.mul(l, inv, out=a).neg_()
    a[0] = 0.0
    return neg_m, inv, a


def ul_solve(factors: tuple[Tensor, Tensor, Tensor], b: Tensor, g: Tensor | None = None, *,
             overwrite: bool = False) -> Tensor:
    """Solve M v = b with UL factors; with an obstacle `g`, project in the forward sweep.

    Without `g` this is an exact linear solve. With `g` it is the Brennan–Schwartz algorithm:
    v_i = max(g_i, c_i + a_i v_{i-1}), which solves the LCP exactly when the exercise set is an
    interval containing the first node (single boundary, exercise on the left).

    **Arguments:** `factors` from :func:`ul_factor`, right-hand side `b` `(n, B)`, obstacle `g`;
    `overwrite=True` solves in place in `b` (no allocation: large batches are memory bound).

    **Returns:** `v` `(n, B)`.
    """
    neg_m, inv, a = factors
    n = b.shape[0]
    v = b if overwrite else b.clone()
    if _single_cpu(v) and v[:, 0].is_contiguous():
        _ul_solve_single(factors, v[:, 0].numpy(), None if g is None else g[:, 0].numpy())
        return v
    # Backward sweep: b'_i = b_i - m_i b'_{i+1}.
    for i in range(n - 2, -1, -1):
        v[i].addcmul_(neg_m[i], v[i + 1])
    v.mul_(inv)
    # Forward sweep: v_i = c_i + a_i v_{i-1}, projected on the obstacle when given.
    if g is None:
        for i in range(1, n):
            v[i].addcmul_(a[i], v[i - 1])
    else:
        torch.maximum(v[0], g[0], out=v[0])
        for i in range(1, n):
            vi = v[i]
            vi.addcmul_(a[i], v[i - 1])
            torch.maximum(vi, g[i], out=vi)
    return v


def _ul_solve_single(factors, v: np.ndarray, g: np.ndarray | None) -> None:
    """:func:`ul_solve` for one problem, in place in `v` (numpy view of the right-hand side).

    The two bidiagonal sweeps run in LAPACK. With an obstacle, the projected forward sweep of
    Brennan–Schwartz sets v = g up to the first node k where the continuation value computed
    from an exercised left neighbour beats g, and then solves the remaining lower bidiagonal
    system exactly; if a later node would still need the projection (the exercise set is not
    one interval) the remaining nodes fall back to the sequential projected sweep, so the result
    is always the Brennan–Schwartz one.
    """
    neg_m, inv, a = (f[:, 0].numpy() for f in factors)
    n = v.shape[0]
    zero = _zeros(n - 1)
    bb = _gtsv(zero, np.ones(n), -neg_m[:-1], v)  # U bb = b, U unit upper bidiagonal
    dd = 1.0 / inv
    lsub = -a * dd  # the sub-diagonal l (a = -l / dd)
    if g is None:
        v[:] = _gtsv(lsub[1:], dd, zero, bb)
        return
    c = bb * inv
    cand = c.copy()
    cand[1:] += a[1:] * g[:-1]
    cont = cand > g
    k = int(np.argmax(cont)) if cont.any() else n
    v[:k] = g[:k]
    if k == n:
        return
    rhs = bb[k:].copy()
    if k > 0:
        rhs[0] -= lsub[k] * g[k - 1]
    tail = _gtsv(lsub[k + 1:], dd[k:], zero[: n - 1 - k], rhs)
    scale = 1e-12 * (1.0 + np.abs(g).max())
    bad = tail < g[k:] - scale
    if bad.any():  # not a single boundary: finish with the sequential projected sweep
        j = k + int(np.argmax(bad))
        v[k:j] = tail[: j - k]
        prev = float(v[j - 1])
        for i in range(j, n):
            prev = max(float(g[i]), float(c[i]) + float(a[i]) * prev)
            v[i] = prev
        return
    np.maximum(tail, g[k:], out=v[k:])


def thomas(l: Tensor, d: Tensor, u: Tensor, b: Tensor) -> Tensor:
    """Batched Thomas algorithm (LU without pivoting) for node-major tridiagonal systems."""
    n = d.shape[0]
    if _single_cpu(b):
        x = _gtsv(l[1:, 0].numpy(), d[:, 0].numpy(), u[:-1, 0].numpy(), b[:, 0].numpy())
        return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
    cp = torch.empty_like(d)
    x = torch.empty_like(b)
    inv = 1.0 / d[0]
    cp[0] = u[0] * inv
    x[0] = b[0] * inv
    for i in range(1, n):
        inv = 1.0 / (d[i] - l[i] * cp[i - 1])
        cp[i] = u[i] * inv
        x[i] = (b[i] - l[i] * x[i - 1]) * inv
    for i in range(n - 2, -1, -1):
        x[i].addcmul_(cp[i], x[i + 1], value=-1.0)
    return x


def brennan_schwartz(factors, b: Tensor, g: Tensor, *, overwrite: bool = False) -> Tensor:
    """Brennan–Schwartz LCP solve (exercise region on the left); see :func:`ul_solve`."""
    return ul_solve(factors, b, g, overwrite=overwrite)


def psor(l: Tensor, d: Tensor, u: Tensor, b: Tensor, g: Tensor, v0: Tensor, *,
         omega: float = 1.2, tol: float = 1e-10, max_iter: int = 10_000) -> tuple[Tensor, int]:
    """Projected SOR for the LCP, red-black ordering (each colour updated in one vectorised step).

    The iteration v_i <- max(g_i, v_i + omega (b_i - (M v)_i) / M_ii) converges to the unique LCP
    solution for an M-matrix and 0 < omega < 2 in the symmetric case (Cryer 1971); the ordering
    of the nodes does not change the limit, only the speed.

    Convergence is judged per problem (column) on the residual of the LCP,
    max_i |min((M v - b)_i, v_i - g_i)| <= tol * max(1, max_i |v0_i|, max_i |g_i|), not on the
    size of the last update (which, with a spectral radius close to 1, can be 100 times smaller
    than the error). A converged problem is frozen, so that each problem's result is the same
    alone or in any batch. For a matrix whose rows are diagonally dominant by at least 1
    (d_i - |l_i| - |u_i| >= 1, as for I - θΔA with a non-negative discount rate) the error
    against the exact LCP solution is then at most that bound (max-norm); with a margin m < 1,
    at most the bound / m.

    **Arguments:** the matrix `l, d, u`, right-hand side `b`, obstacle `g`, start `v0` (all
    `(n, B)`), relaxation `omega`, tolerance `tol` (relative, as above), `max_iter`.

    **Returns:** `(v, iterations)` (iterations of the slowest problem). Raises
    :class:`LCPConvergenceError` if some problem has not converged after `max_iter` iterations.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"psor: max_iter must be an integer >= 1, got {max_iter!r}")
    n, bsz = d.shape
    pad = torch.zeros(n + 2, bsz, dtype=b.dtype, device=b.device)
    v = pad[1:-1]
    torch.maximum(v0, g, out=v)
    inv = omega / d
    colours = []
    for p in (0, 1):
        cnt = len(range(p, n, 2))
        if cnt:
            colours.append((slice(p, n, 2), slice(p, p + 2 * cnt - 1, 2),
                            slice(p + 2, p + 2 * cnt + 1, 2)))
    # per problem: the bound on the residual
    bound = tol * torch.maximum(v.abs().amax(dim=0), g.abs().amax(dim=0)).clamp(min=1.0)
    active = torch.ones(bsz, dtype=torch.bool, device=b.device)

    def residual() -> Tensor:
        return torch.minimum(matvec(l, d, u, v) - b, v - g).abs().amax(dim=0)

    worst = residual()
    active &= worst > bound
    if not bool(active.any()):
        return v.clone(), 0
    for it in range(1, max_iter + 1):
        for idx, left, right in colours:
            vi = v[idx]
            r = b[idx] - l[idx] * pad[left] - d[idx] * vi - u[idx] * pad[right]
            new = torch.maximum(vi + inv[idx] * r, g[idx])
            vi.copy_(torch.where(active, new, vi))  # converged problems stay frozen
        worst = torch.where(active, residual(), worst)
        active &= worst > bound
        if not bool(active.any()):
            return v.clone(), it
    bad = active.nonzero()[:, 0].tolist()
    j = bad[0]
    raise LCPConvergenceError(f"PSOR did not converge in {max_iter} iterations for problems "
                              f"{bad[:5]} (problem {j}: LCP residual {float(worst[j]):.3e} > "
                              f"{float(bound[j]):.3e}); raise max_iter or use lcp='policy'")


def policy_iteration(l: Tensor, d: Tensor, u: Tensor, b: Tensor, g: Tensor, stop0: Tensor, *,
                     max_iter: int | None = None) -> tuple[Tensor, Tensor, int]:
    """Howard's policy iteration for min(M v - b, v - g) = 0.

    A policy says, per node, whether to stop (row v_i = g_i) or continue (row (M v)_i = b_i); each
    iteration solves that tridiagonal system and switches every node to the row with the smaller
    residual. For an M-matrix the values decrease monotonically and the policy stabilises after at
    most n + 1 iterations (Bokanowski, Maroso & Zidani 2009); a warm start from the previous time
    step's policy usually needs 1–3. A switch needs a margin of 1e-13 relative to the data so that
    rounding cannot make a tie (v = g, M v = b, e.g. where the payoff is 0) cycle.

    **Arguments:** `l, d, u, b, g` `(n, B)`, initial stop mask `stop0` (bool `(n, B)`), `max_iter`
    (default n + 2).

    **Returns:** `(v, stop, iterations)`. Raises :class:`LCPConvergenceError` if not converged.
    """
    n = d.shape[0]
    max_iter = n + 2 if max_iter is None else max_iter
    stop = stop0.clone()
    eps = 1e-13 * max(1.0, float(b.abs().max()), float(g.abs().max()))
    zero, one = torch.zeros((), dtype=d.dtype, device=d.device), torch.ones((), dtype=d.dtype,
                                                                          device=d.device)
    for it in range(1, max_iter + 1):
        v = thomas(torch.where(stop, zero, l), torch.where(stop, one, d), torch.where(stop, zero, u),
                   torch.where(stop, g, b))
        res = matvec(l, d, u, v) - b
        gap = v - g
        new = torch.where(gap < res - eps, True, torch.where(res < gap - eps, False, stop))
        if torch.equal(new, stop):
            return v, stop, it
        stop = new
    raise LCPConvergenceError(f"policy iteration did not converge in {max_iter} iterations")
