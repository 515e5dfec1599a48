"""The tridiagonal and LCP kernels of solvers.freeboundary, on random M-matrices.

Linear solves are checked against scipy.linalg.solve_banded (the peer, column by column); LCP
solutions against their defining conditions min(M v - b, v - g) = 0 (Cryer 1971), which have a
unique solution for an M-matrix.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import solve_banded

from solvers.freeboundary import lcp


def random_m_matrix(n, b, seed, drift=0.3):
    """Node-major (n, B) diagonals of I - dt A for a random diffusion with drift (an M-matrix)."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + torch.rand(n, b, generator=g, dtype=torch.float64) * 5.0
    mu = (torch.rand(n, b, generator=g, dtype=torch.float64) - 0.5) * 2 * drift
    lo, up = -(a - mu), -(a + mu)
    d = 1.0 + 2.0 * a + 0.05
    lo[0], up[-1] = 0.0, 0.0
    return lo, d, up, g


def banded_solve(lo, d, up, rhs):
    out = np.empty_like(rhs.numpy())
    for j in range(d.shape[1]):
        ab = np.zeros((3, d.shape[0]))
        ab[0, 1:] = up[:-1, j].numpy()
        ab[1] = d[:, j].numpy()
        ab[2, :-1] = lo[1:, j].numpy()
        out[:, j] = solve_banded((1, 1), ab, rhs[:, j].numpy())
    return torch.from_numpy(out)


@given(st.integers(3, 60), st.integers(1, 5), st.integers(0, 10_000))
@settings(max_examples=15)
def test_linear_solves_match_scipy(n, b, seed):
    lo, d, up, g = random_m_matrix(n, b, seed)
    rhs = torch.randn(n, b, generator=g, dtype=torch.float64)
    ref = banded_solve(lo, d, up, rhs)
    torch.testing.assert_close(lcp.thomas(lo, d, up, rhs), ref, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(lcp.ul_solve(lcp.ul_factor(lo, d, up), rhs), ref, rtol=1e-11,
                               atol=1e-12)
    torch.testing.assert_close(lcp.matvec(lo, d, up, ref), rhs, rtol=1e-11, atol=1e-11)


def complementarity_residual(lo, d, up, rhs, g, v):
    return torch.minimum(lcp.matvec(lo, d, up, v) - rhs, v - g).abs().max().item()


@pytest.mark.parametrize("b", [1, 4])  # b = 1 exercises the LAPACK path, b = 4 the torch path
def test_lcp_solvers_satisfy_complementarity_single_boundary(b):
    n = 80
    lo, d, up, gen = random_m_matrix(n, b, seed=7)
    x = torch.linspace(0.0, 1.0, n, dtype=torch.float64).unsqueeze(1).expand(n, b)
    g = torch.clamp(0.6 - x, min=0.0) * 3.0  # a put-like (non-increasing) obstacle
    rhs = 0.4 + 0.1 * torch.rand(n, b, generator=gen, dtype=torch.float64)
    v_bs = lcp.brennan_schwartz(lcp.ul_factor(lo, d, up), rhs, g)
    v_pi, stop, its = lcp.policy_iteration(lo, d, up, rhs, g, torch.zeros(n, b, dtype=torch.bool))
    v_ps, _ = lcp.psor(lo, d, up, rhs, g, rhs.clone(), omega=1.3, tol=1e-13, max_iter=20_000)
    for v in (v_bs, v_pi, v_ps):
        assert complementarity_residual(lo, d, up, rhs, g, v) < 1e-10
    torch.testing.assert_close(v_bs, v_pi, rtol=0, atol=1e-11)
    torch.testing.assert_close(v_ps, v_pi, rtol=0, atol=1e-10)
    assert stop[:5].all() and not stop[-5:].any()  # exercise on the left only
    assert its <= n + 2


def test_policy_and_psor_two_sided_obstacle():
    n, b = 60, 3
    lo, d, up, gen = random_m_matrix(n, b, seed=3, drift=0.0)
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64).unsqueeze(1).expand(n, b)
    g = x.abs()
    rhs = 0.2 + 0.05 * torch.rand(n, b, generator=gen, dtype=torch.float64)
    v_pi, stop, _ = lcp.policy_iteration(lo, d, up, rhs, g, torch.zeros(n, b, dtype=torch.bool))
    v_ps, _ = lcp.psor(lo, d, up, rhs, g, g.clone(), omega=1.5, tol=1e-13, max_iter=50_000)
    assert complementarity_residual(lo, d, up, rhs, g, v_pi) < 1e-10
    assert complementarity_residual(lo, d, up, rhs, g, v_ps) < 1e-10
    assert stop[0].all() and stop[-1].all() and not stop[n // 2].any()  # stop at both ends


def test_psor_raises_when_not_converged():
    lo, d, up, gen = random_m_matrix(40, 2, seed=1)
    g = torch.zeros(40, 2, dtype=torch.float64)
    rhs = torch.rand(40, 2, generator=gen, dtype=torch.float64)
    with pytest.raises(lcp.LCPConvergenceError, match="did not converge"):
        lcp.psor(lo, d, up, rhs, g, g, max_iter=2)


def stiff_put_lcp(n, b, seed):
    """A put-like LCP whose PSOR iteration converges slowly (strong diffusion: spectral radius
    close to 1), rows diagonally dominant by 1.05."""
    lo, d, up, gen = random_m_matrix(n, b, seed)
    scale = torch.linspace(1.0, 40.0, b, dtype=torch.float64)  # problems of different stiffness
    lo, up = lo * scale, up * scale
    d = 1.05 + (d - 1.05) * scale
    x = torch.linspace(0.0, 1.0, n, dtype=torch.float64).unsqueeze(1).expand(n, b)
    g = torch.clamp(0.6 - x, min=0.0) * 3.0
    rhs = 0.4 + 0.1 * torch.rand(n, b, generator=gen, dtype=torch.float64)
    return lo, d, up, rhs, g


def test_psor_error_within_tolerance_of_exact_lcp():
    # The documented guarantee: per problem, max |v - v*| <= tol * max(1, |v0|, |g|) when the
    # rows are diagonally dominant by >= 1. v* from policy iteration (exact after finitely many
    # iterations). An update-size test stopped ~10-100x short of this on stiff problems.
    n, b, tol = 120, 3, 1e-8
    lo, d, up, rhs, g = stiff_put_lcp(n, b, seed=5)
    v_pi, _, _ = lcp.policy_iteration(lo, d, up, rhs, g, torch.zeros(n, b, dtype=torch.bool))
    assert complementarity_residual(lo, d, up, rhs, g, v_pi) < 1e-12
    v0 = g.clone()
    v_ps, _ = lcp.psor(lo, d, up, rhs, g, v0, omega=1.2, tol=tol, max_iter=200_000)
    bound = tol * torch.maximum(v0.abs().amax(0), g.abs().amax(0)).clamp(min=1.0)
    err = (v_ps - v_pi).abs().amax(0)
    assert (err <= bound).all(), (err, bound)


def test_psor_result_does_not_depend_on_the_batch():
    # Each column alone equals the same column solved in the batch (convergence and freezing are
    # per problem), to round-off.
    n, b = 120, 3
    lo, d, up, rhs, g = stiff_put_lcp(n, b, seed=5)
    v_all, _ = lcp.psor(lo, d, up, rhs, g, g.clone(), tol=1e-8, max_iter=200_000)
    for j in range(b):
        c = slice(j, j + 1)
        v_j, _ = lcp.psor(lo[:, c].contiguous(), d[:, c].contiguous(), up[:, c].contiguous(),
                          rhs[:, c].contiguous(), g[:, c].contiguous(), g[:, c].clone(),
                          tol=1e-8, max_iter=200_000)
        torch.testing.assert_close(v_all[:, c], v_j, rtol=0, atol=1e-14)
