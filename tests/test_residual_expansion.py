"""Residual expansion (Dherin & Munn 2025) and norm growth at initialisation.

Known answers: the binomial path decomposition of prod(I + lambda A_i) (exact algebra; C(n,k)
members per level), the O(lambda^3) remainder of the second-order expansion, and the closed form
E||h_L||^2/||h_0||^2 = (1 + c lambda^2)^L (c = 1 linear, 1/2 ReLU; REFERENCES.md, Depth).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from odedepth.analysis import (
    branch_scale,
    expected_norm_growth,
    level_terms,
    norm_growth,
    residual_paths,
    residual_stack,
    second_order_expansion,
)


def _mats(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)


@pytest.mark.parametrize("n", [1, 3, 6])
def test_paths_sum_to_product_and_levels_are_binomial(n):
    d, lam = 5, 0.37
    A = _mats(n, d, seed=n)
    product = torch.eye(d, dtype=torch.float64)
    for i in range(n):
        product = (torch.eye(d, dtype=torch.float64) + lam * A[i]) @ product
    total = torch.zeros(d, d, dtype=torch.float64)
    counts = [0] * (n + 1)
    by_level = torch.zeros(n + 1, d, d, dtype=torch.float64)
    for subset, M in residual_paths(A):
        counts[len(subset)] += 1
        by_level[len(subset)] += M
        total += lam ** len(subset) * M
    assert counts == [math.comb(n, k) for k in range(n + 1)]
    assert sum(counts) == 2 ** n
    torch.testing.assert_close(total, product, rtol=1e-12, atol=1e-12)
    # The O(n^2) recursion gives the same level sums as the 2^n enumeration.
    torch.testing.assert_close(level_terms(A), by_level, rtol=1e-12, atol=1e-12)


def test_level_weights_with_identity_modules():
    # A_i = I: every level-k path is I, so E_k = C(n, k) I and the total weight is (1 + lambda)^n.
    n, d = 8, 3
    A = torch.eye(d, dtype=torch.float64).expand(n, d, d).clone()
    E = level_terms(A)
    for k in range(n + 1):
        torch.testing.assert_close(E[k], math.comb(n, k) * torch.eye(d, dtype=torch.float64))
    lam = 1.0 / n
    w = sum(lam ** k * E[k][0, 0].item() for k in range(n + 1))
    assert w == pytest.approx((1 + lam) ** n, rel=1e-13)


@given(st.integers(1, 6), st.integers(0, 1000))
def test_level_terms_applied_to_vector_match_stack(n, seed):
    d, lam = 4, 0.5
    A = _mats(n, d, seed)
    x = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    Ex = level_terms(A, x)  # (n+1, 3, d)
    out = residual_stack([lambda h, a=a: h @ a.T for a in A], x, lam)
    series = sum(lam ** k * Ex[k] for k in range(n + 1))
    torch.testing.assert_close(series, out, rtol=1e-11, atol=1e-11)


def test_second_order_expansion_error_scales_as_lambda_cubed():
    torch.manual_seed(0)
    d, n = 6, 5
    Ws = [torch.randn(d, d, dtype=torch.float64) / math.sqrt(d) for _ in range(n)]
    bs = [0.3 * torch.randn(d, dtype=torch.float64) for _ in range(n)]
    branches = [lambda h, W=W, b=b: torch.tanh(h @ W.T + b) for W, b in zip(Ws, bs)]
    x = torch.randn(d, dtype=torch.float64)
    lams = np.array([0.2, 0.1, 0.05, 0.025, 0.0125])
    err2, err1 = [], []
    for lam in lams:
        exact = residual_stack(branches, x, float(lam))
        err2.append((second_order_expansion(branches, x, float(lam)) - exact).norm().item())
        err1.append((second_order_expansion(branches, x, float(lam), order=1) - exact).norm().item())
    slope2 = np.polyfit(np.log(lams), np.log(err2), 1)[0]
    slope1 = np.polyfit(np.log(lams), np.log(err1), 1)[0]
    assert slope2 == pytest.approx(3.0, abs=0.15)
    assert slope1 == pytest.approx(2.0, abs=0.15)


def test_second_order_expansion_exact_for_linear_two_blocks():
    # For linear modules and n = 2 the expansion is exact: (I + lA2)(I + lA1) = I + l(A1+A2) + l^2 A2 A1.
    A = _mats(2, 4, seed=3)
    x = torch.randn(4, dtype=torch.float64)
    branches = [lambda h, a=a: a @ h for a in A]
    torch.testing.assert_close(second_order_expansion(branches, x, 0.9),
                               residual_stack(branches, x, 0.9), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("branch", ["linear", "relu"])
@pytest.mark.parametrize("rule", ["1", "1/sqrt(L)", "1/L", "learnable"])
def test_norm_growth_matches_closed_form(branch, rule):
    L = 10
    mean, se = norm_growth(L, rule, width=64, branch=branch, trials=300,
                           generator=torch.Generator().manual_seed(1))
    lam = branch_scale(rule, L)
    c = 1.0 if branch == "linear" else 0.5
    for k in (1, L // 2, L):
        expected = (1 + c * lam ** 2) ** k
        assert expected == pytest.approx(expected_norm_growth(k, lam, branch))
        # Monte Carlo: within 4 standard errors (plus a tiny floor for the exact lambda = 0 case).
        assert abs(mean[k].item() - expected) <= 4 * se[k].item() + 1e-12


def test_norm_growth_limits():
    # Published limits: lambda = 1/sqrt(L) -> e^c, lambda = 1/L -> 1, lambda = 1 -> 2^L (linear).
    L = 1000
    assert expected_norm_growth(L, branch_scale("1/sqrt(L)", L)) == pytest.approx(math.e, rel=2e-3)
    assert expected_norm_growth(L, branch_scale("1/sqrt(L)", L), "relu") == pytest.approx(
        math.exp(0.5), rel=1e-3)
    assert expected_norm_growth(L, branch_scale("1/L", L)) == pytest.approx(1.0, abs=2e-3)
    assert expected_norm_growth(50, 1.0) == 2.0 ** 50
    # seeds_spec 2.3: lambda = 1, n = 100, iid: 2^100 squared norm ~ 1.27e30, i.e. norm ~ 1.1e15.
    assert math.sqrt(expected_norm_growth(100, 1.0)) == pytest.approx(1.1e15, rel=0.03)


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        level_terms(torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="NaN"):
        level_terms(torch.full((2, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="unknown rule"):
        branch_scale("1/L^2", 4)
    with pytest.raises(ValueError, match="depth"):
        branch_scale("1/L", 0)
    with pytest.raises(ValueError, match="branch"):
        norm_growth(3, "1", branch="tanh")
    with pytest.raises(ValueError, match="order"):
        second_order_expansion([], torch.zeros(2), 0.1, order=3)
    with pytest.raises(ValueError, match="dimension"):
        level_terms(_mats(2, 3, 0), torch.zeros(4))
