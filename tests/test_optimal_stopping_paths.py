"""Path simulators of solvers.stopping against closed-form moments.

Tolerances are 4-5 standard errors of the Monte Carlo estimator (seeded, so deterministic).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as hst

from solvers import stopping as st

F64 = torch.float64


def fbm_cov(t, s, H):
    return 0.5 * (t ** (2 * H) + s ** (2 * H) - abs(t - s) ** (2 * H))


@pytest.mark.parametrize("H", [0.3, 0.5, 0.8])
def test_fbm_covariance_closed_form(H):
    times = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.6, 1.0], dtype=F64)
    n = 40_000
    x = st.FractionalBrownianMotion(H, times).sample(n, torch.Generator().manual_seed(1))[..., 0]
    assert torch.all(x[:, 0] == 0)                                     # B_0 = 0
    emp = (x.T @ x) / n                                                # mean zero process
    for i, ti in enumerate(times.tolist()):
        for j, tj in enumerate(times.tolist()):
            c = fbm_cov(ti, tj, H)
            # Var of the product estimator: (C_ii C_jj + C_ij^2) / n for Gaussians
            se = math.sqrt((fbm_cov(ti, ti, H) * fbm_cov(tj, tj, H) + c * c) / n)
            assert abs(float(emp[i, j]) - c) <= 5 * se + 1e-15


def test_fbm_half_has_independent_increments():
    times = torch.linspace(0.2, 2.0, 10, dtype=F64)
    n = 40_000
    x = st.FractionalBrownianMotion(0.5, times).sample(n, torch.Generator().manual_seed(2))[..., 0]
    inc = torch.diff(x, dim=1, prepend=torch.zeros(n, 1, dtype=F64))
    dt = torch.diff(times, prepend=torch.zeros(1, dtype=F64))
    emp = (inc.T @ inc) / n
    expected = torch.diag(dt)
    se = torch.sqrt((dt[:, None] * dt[None, :] + expected**2) / n)
    assert torch.all((emp - expected).abs() <= 5 * se)


def test_fbm_persistent_increments_are_positively_correlated():
    # H > 1/2: corr of consecutive unit increments = 2^{2H-1} - 1 (closed form)
    H = 0.75
    times = torch.arange(0.0, 4.0, dtype=F64)
    x = st.FractionalBrownianMotion(H, times).sample(40_000, torch.Generator().manual_seed(3))
    inc = torch.diff(x[..., 0], dim=1)
    rho = float((inc[:, 0] * inc[:, 1]).mean() / inc[:, 0].pow(2).mean())
    assert rho == pytest.approx(2 ** (2 * H - 1) - 1, abs=0.02)


def test_gbm_moments_and_correlation():
    rho, r, q, vol = 0.6, 0.05, 0.02, torch.tensor([0.2, 0.3], dtype=F64)
    corr = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=F64)
    times = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    gbm = st.GeometricBrownianMotion([100.0, 50.0], r, vol, times, dividend=q, corr=corr)
    n = 100_000
    s = gbm.sample(n, torch.Generator().manual_seed(4), antithetic=True)
    assert s.shape == (n, 3, 2)
    assert torch.all(s[:, 0] == torch.tensor([100.0, 50.0], dtype=F64))
    # E[S_T] = S_0 exp((r - q) T)
    for j, s0 in enumerate([100.0, 50.0]):
        m = s[:, -1, j]
        se = float(m.std() / math.sqrt(n))
        assert abs(float(m.mean()) - s0 * math.exp((r - q) * 1.0)) <= 5 * se
    # log returns: mean (r - q - vol^2/2) T, std vol sqrt(T), correlation rho
    lr = torch.log(s[:, -1] / s[:, 0])
    assert torch.allclose(lr.std(dim=0), vol, rtol=0.01)
    c = torch.corrcoef(lr.T)[0, 1]
    assert float(c) == pytest.approx(rho, abs=0.01)
    # antithetic pairs: log increments of the second half are the negated normals of the first
    z = torch.log(s[:, 1] / s[:, 0]) - (r - q - vol**2 / 2) * 0.5
    assert torch.allclose(z[: n // 2], -z[n // 2:], atol=1e-12)


def test_gbm_sample_from_is_a_martingale_after_discounting():
    r, q = 0.05, 0.1
    times = torch.linspace(0, 3, 10, dtype=F64)
    gbm = st.GeometricBrownianMotion(100.0, r, 0.2, times, dividend=q, dim=3)
    state = torch.tensor([[80.0, 100.0, 120.0], [90.0, 95.0, 130.0]], dtype=F64)
    p = gbm.sample_from(4, state, 50_000, torch.Generator().manual_seed(5))
    assert p.shape == (100_000, 10, 3)
    assert torch.all(p[:50_000, :5] == state[0])                       # prefix = the state
    assert torch.all(p[50_000:, :5] == state[1])
    tau = float(times[-1] - times[4])
    for i in range(2):
        m = p[i * 50_000:(i + 1) * 50_000, -1].mean(0)
        se = p[i * 50_000:(i + 1) * 50_000, -1].std(0) / math.sqrt(50_000)
        assert torch.all((m - state[i] * math.exp((r - q) * tau)).abs() <= 5 * se)


def test_brownian_motion_variance_and_restart():
    times = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    bm = st.BrownianMotion(times, dim=2, x0=1.0, drift=0.3, sigma=2.0)
    x = bm.sample(50_000, torch.Generator().manual_seed(6))
    var = x.var(dim=0)                                                 # sigma^2 t
    assert torch.allclose(var, (4.0 * times)[:, None].expand(3, 2), rtol=0.03)
    assert torch.allclose(x.mean(0), (1.0 + 0.3 * times)[:, None].expand(3, 2), atol=0.04)
    y = bm.sample_from(1, torch.zeros(1, 2, dtype=F64), 50_000, torch.Generator().manual_seed(7))
    assert torch.all(y[:, :2] == 0)
    assert float(y[:, 2].var()) == pytest.approx(4.0 * 1.0, rel=0.03)


def test_markov_chain_simulation_frequencies():
    P = torch.tensor([[0.9, 0.1], [0.4, 0.6]], dtype=F64)
    chain = st.MarkovChain(P, n_times=3, initial=0)
    x = chain.sample(40_000, torch.Generator().manual_seed(8))[..., 0]
    # P(X_2 = 1 | X_0 = 0) = (P^2)[0, 1]
    p2 = float((P @ P)[0, 1])
    freq = float((x[:, 2] == 1).double().mean())
    assert abs(freq - p2) <= 5 * math.sqrt(p2 * (1 - p2) / 40_000)


@given(hst.integers(0, 2**31 - 1), hst.integers(1, 6))
def test_generator_reproducibility(seed, n):
    gbm = st.GeometricBrownianMotion(1.0, 0.0, 0.2, [0.0, 1.0, 2.0])
    a = gbm.sample(n * 2, torch.Generator().manual_seed(seed), antithetic=True)
    b = gbm.sample(n * 2, torch.Generator().manual_seed(seed), antithetic=True)
    assert torch.equal(a, b)


def test_simulator_bad_inputs():
    with pytest.raises(ValueError, match="hurst"):
        st.FractionalBrownianMotion(1.2, [0.1, 0.2])
    with pytest.raises(ValueError, match="increasing"):
        st.BrownianMotion([0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="times"):
        st.BrownianMotion([-1.0, 1.0])
    with pytest.raises(ValueError, match="n_paths"):
        st.BrownianMotion([0.0, 1.0]).sample(-5)
    with pytest.raises(ValueError, match="even"):
        st.BrownianMotion([0.0, 1.0]).sample(5, antithetic=True)
    with pytest.raises(ValueError, match="positive definite"):
        st.GeometricBrownianMotion(1.0, 0.0, 0.2, [1.0], corr=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="number of assets"):
        st.GeometricBrownianMotion([1.0, 2.0], 0.0, [0.2, 0.2, 0.2], [1.0])
    with pytest.raises(ValueError, match="vol"):
        st.GeometricBrownianMotion(1.0, 0.0, -0.2, [1.0])
    with pytest.raises(ValueError, match="state"):
        st.GeometricBrownianMotion(1.0, 0.0, 0.2, [0.0, 1.0], dim=2).sample_from(
            0, torch.ones(3, 3), 2)
    with pytest.raises(ValueError, match="time_index"):
        st.BrownianMotion([0.0, 1.0]).sample_from(2, torch.zeros(1, 1), 2)
    with pytest.raises(ValueError, match="state contains NaN"):
        st.BrownianMotion([0.0, 1.0]).sample_from(0, torch.full((1, 1), math.nan), 2)
    with pytest.raises(ValueError, match="probability distributions"):
        st.MarkovChain(torch.tensor([[0.5, 0.6], [0.5, 0.5]]), n_times=3)


def test_gbm_rate_must_be_a_scalar():
    # A (dim,) rate used to fail inside float() with "only one element tensors can be converted".
    times = torch.linspace(0.0, 1.0, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="rate must be a scalar.*shape \\(2,\\)"):
        st.GeometricBrownianMotion(100.0, torch.tensor([0.05, 0.05]), 0.2, times, dim=2)
    gbm = st.GeometricBrownianMotion(100.0, torch.tensor(0.05), 0.2, times, dim=2)
    assert gbm.discount()[-1].item() == pytest.approx(math.exp(-0.05))  # 0-d tensor accepted
