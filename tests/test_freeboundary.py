"""solvers.freeboundary against closed forms (REFERENCES.md, free-boundary section).

Peer-library (QuantLib) comparisons and convergence orders are in test_freeboundary_quantlib.py.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from solvers import freeboundary as fb


def bs_formula(kind, S, K, r, q, vol, T):
    """Black–Scholes European price (Black & Scholes 1973; Merton 1973 with dividend yield)."""
    d1 = (math.log(S / K) + (r - q + 0.5 * vol * vol) * T) / (vol * math.sqrt(T))
    d2 = d1 - vol * math.sqrt(T)
    if kind == "call":
        return S * math.exp(-q * T) * norm.cdf(d1) - K * math.exp(-r * T) * norm.cdf(d2)
    return K * math.exp(-r * T) * norm.cdf(-d2) - S * math.exp(-q * T) * norm.cdf(-d1)


# ---------------------------------------------------------------- perpetual American put
def test_perpetual_put_approached_from_below():
    # K = 100, r = 0.05, sigma = 0.2: S* = 2rK/(2r + sigma^2) = 71.428571, V(100) = 12.320033.
    s_star = 2 * 0.05 * 100 / (2 * 0.05 + 0.04)
    v_perp = (100 - s_star) * (100 / s_star) ** (-2 * 0.05 / 0.04)
    assert v_perp == pytest.approx(12.320033, abs=1e-6)
    values = []
    for T in (5.0, 20.0, 100.0):
        p = fb.black_scholes("put", 100.0, 0.05, 0.2, T, spot_range=(5.0, 5000.0))
        res = fb.solve(p, nx=700, nt=250)
        values.append(res.value_at(100.0).item())
    assert values[0] < values[1] < values[2] < v_perp  # increasing in T, below the limit
    assert values[2] == pytest.approx(v_perp, abs=2e-3)
    times, s_b = res.boundary
    assert times[0, 0].item() == 0.0
    # The boundary decreases towards S* as the horizon grows (at t = 0 of a T = 100 put).
    assert s_b[0, 0].item() == pytest.approx(s_star, abs=0.15)


# ---------------------------------------------------------------- American call, no dividends
def test_american_call_without_dividends_equals_european():
    p = fb.black_scholes("call", 100.0, 0.05, 0.25, 1.0)
    res = fb.solve(p, nx=800, nt=200)
    # QuantLib's value (REFERENCES.md) and the Black–Scholes formula agree.
    assert bs_formula("call", 100, 100, 0.05, 0.0, 0.25, 1.0) == pytest.approx(
        12.3359989303687243, abs=1e-9)
    assert res.value_at(100.0).item() == pytest.approx(12.3359989303687243, abs=1e-4)
    for S in (80.0, 120.0):
        assert res.value_at(S).item() == pytest.approx(
            bs_formula("call", S, 100, 0.05, 0.0, 0.25, 1.0), abs=1e-4)
    # Never exercised early: no free boundary.
    assert torch.isnan(res.boundary[1]).all()


def test_european_greeks_match_closed_form():
    S, K, r, q, vol, T = 100.0, 100.0, 0.05, 0.02, 0.2, 1.0
    res = fb.solve(fb.black_scholes("put", K, r, vol, T, dividend=q, exercise="european"),
                   nx=800, nt=200)
    d1 = (math.log(S / K) + (r - q + 0.5 * vol**2) * T) / (vol * math.sqrt(T))
    delta = -math.exp(-q * T) * norm.cdf(-d1)
    gamma = math.exp(-q * T) * norm.pdf(d1) / (S * vol * math.sqrt(T))
    assert res.value_at(S).item() == pytest.approx(bs_formula("put", S, K, r, q, vol, T), abs=1e-4)
    assert res.delta_at(S).item() == pytest.approx(delta, abs=1e-4)
    assert res.gamma_at(S).item() == pytest.approx(gamma, abs=1e-4)


# ---------------------------------------------------------------- put-call symmetry
def test_put_call_symmetry_american():
    # C(S, K, r, q) = P(K, S, q, r) (McDonald & Schroder 1998), with early exercise on both sides.
    S, K, r, q, vol, T = 100.0, 90.0, 0.03, 0.07, 0.3, 1.0
    call = fb.solve(fb.black_scholes("call", K, r, vol, T, dividend=q), nx=800, nt=200)
    put = fb.solve(fb.black_scholes("put", S, q, vol, T, dividend=r), nx=800, nt=200)
    c, p = call.value_at(S).item(), put.value_at(K).item()
    assert c == pytest.approx(p, abs=2e-4)
    assert c > bs_formula("call", S, K, r, q, vol, T) + 0.05  # early exercise premium present
    # The boundaries map onto each other too: S*_call(t) = K S / S*_put(t).
    _, bc = call.boundary
    _, bp = put.boundary
    assert bc[0, 0].item() == pytest.approx(K * S / bp[0, 0].item(), rel=2e-3)


# ---------------------------------------------------------------- zero volatility
def test_zero_volatility_put_uses_upwinding():
    # Put S = 100, K = 120, T = 1, r = 0, q = 0.05: max_t e^{-rt}(K - S e^{(r-q)t}) at t = T.
    exact = 120 - 100 * math.exp(-0.05)
    assert exact == pytest.approx(24.8770575499286082, abs=1e-12)
    p = fb.black_scholes("put", 120.0, 0.0, 0.0, 1.0, dividend=0.05, spot_range=(80.0, 140.0))
    errs = []
    for nx in (400, 800):
        res = fb.solve(p, nx=nx, nt=100, mesh="uniform")
        assert res.stats["upwind_nodes"] == nx - 2  # sigma = 0: every node upwinded
        errs.append(abs(res.value_at(100.0).item() - exact))
    assert errs[1] < 2e-3
    assert 1.6 < errs[0] / errs[1] < 2.4  # first-order upwind in space


def test_zero_volatility_immediate_exercise():
    # r = 0.05, q = 0: the forward rises and discounting hurts: exercise now, V = K - S.
    p = fb.black_scholes("put", 120.0, 0.05, 0.0, 1.0, spot_range=(50.0, 250.0))
    res = fb.solve(p, nx=400, nt=100)
    assert res.value_at(100.0).item() == pytest.approx(20.0, abs=1e-8)


# ---------------------------------------------------------------- Bermudan
def test_bermudan_one_date_equals_european():
    K, r, q, vol, T = 100.0, 0.05, 0.02, 0.2, 1.0
    ber = fb.solve(fb.black_scholes("put", K, r, vol, T, dividend=q, exercise_dates=[T]),
                   nx=800, nt=200)
    assert ber.problem.exercise == "bermudan"
    for s in (90.0, 100.0, 110.0):
        assert ber.value_at(s).item() == pytest.approx(bs_formula("put", s, K, r, q, vol, T),
                                                       abs=1e-4)


def test_bermudan_between_european_and_american():
    K, r, vol, T = 100.0, 0.05, 0.2, 1.0
    dates = [0.25, 0.5, 0.75, 1.0]
    ber = fb.solve(fb.black_scholes("put", K, r, vol, T, exercise_dates=dates), nx=400, nt=100)
    ame = fb.solve(fb.black_scholes("put", K, r, vol, T), nx=400, nt=100)
    eur = bs_formula("put", 100.0, K, r, 0.0, vol, T)
    b, a = ber.value_at(100.0).item(), ame.value_at(100.0).item()
    assert eur + 0.05 < b < a - 0.01
    # The boundary exists exactly at the exercise dates (t = 0.25, 0.5, 0.75), not in between.
    times, s_b = ber.boundary
    finite = torch.isfinite(s_b[0])
    got = sorted(round(t, 9) for t in times[0, finite].tolist())
    assert got == [0.25, 0.5, 0.75]


# ---------------------------------------------------------------- Brownian motion, linear cost
@pytest.mark.parametrize("lcp", ["policy", "psor"])
def test_brownian_motion_linear_cost(lcp):
    # sup E[|B_tau| - c tau] = 1/(4c), stop at the exit of (-1/(2c), 1/(2c)).
    c = 0.5
    prob = fb.brownian_linear_cost(c, maturity=20.0)
    kw = dict(nx=201, nt=200) if lcp == "policy" else dict(nx=81, nt=100, psor_omega=1.9)
    res = fb.solve(prob, lcp=lcp, **kw)
    assert res.value_at(0.0).item() == pytest.approx(1 / (4 * c), abs=2e-3)
    # Inside the continuation region V(x) = c x^2 + 1/(4c).
    assert res.value_at(0.5).item() == pytest.approx(c * 0.25 + 1 / (4 * c), abs=2e-3)
    _, xs = res.boundary
    assert xs.shape[-1] == 2  # two-sided
    h = 3.0 / (kw["nx"] - 1)
    assert xs[0, 0, 0].item() == pytest.approx(-1 / (2 * c), abs=h)
    assert xs[0, 0, 1].item() == pytest.approx(1 / (2 * c), abs=h)


def test_psor_contract_independent_of_batch_and_close_to_exact_lcp():
    # American call K=100, r=0, sigma=0.4, T=0.25, q=0.05 on 200 x 50: PSOR alone and in a batch
    # with another contract must agree (per-problem convergence), and lie within the per-step
    # tolerance (summed over the steps) of the exact LCP solve (policy iteration). Before the
    # fix: 7.408082601 alone, 7.408077833 in the batch, exact 7.408084355.
    f64 = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    args = dict(nx=200, nt=50)
    one = fb.black_scholes("call", 100.0, 0.0, 0.4, 0.25, 0.05)
    solo = fb.solve(one, lcp="psor", **args)
    batch = fb.solve(fb.black_scholes("call", f64(100.0, 80.0), f64(0.0, 0.03), f64(0.4, 0.3),
                                      f64(0.25, 2.0), f64(0.05, 0.08)), lcp="psor", **args)
    exact = fb.solve(one, lcp="policy", **args)
    torch.testing.assert_close(batch.values[:1], solo.values, rtol=0, atol=1e-11)
    bound = solo.stats["steps"] * 1e-10 * float(exact.values.abs().max())
    assert float((solo.values - exact.values).abs().max()) <= bound
    assert solo.value_at(100.0).item() == pytest.approx(exact.value_at(100.0).item(), abs=bound)


def test_brennan_schwartz_refuses_two_sided_problem():
    with pytest.raises(ValueError, match="single exercise boundary"):
        fb.solve(fb.brownian_linear_cost(0.5), nx=51, nt=10, lcp="brennan-schwartz")


# ---------------------------------------------------------------- general problem, callables
def test_time_dependent_callable_coefficients_match_piecewise_closed_form():
    # European put with a deterministic rate r(t): the price is Black–Scholes with the average
    # rate (Merton 1973). r(t) = 0.02 + 0.06 t on [0, 1] averages to 0.05.
    K, vol, T = 100.0, 0.2, 1.0

    def rate(t, x):
        return 0.02 + 0.06 * t

    def drift(t, x):
        return rate(t, x) - 0.5 * vol * vol

    prob = fb.ObstacleProblem(
        payoff=lambda t, x: torch.clamp(K - torch.exp(x), min=0.0), x_min=math.log(K) - 1.2,
        x_max=math.log(K) + 1.2, maturity=T, drift=drift, vol=vol, rate=rate,
        lower="linear", upper="linear", exercise="european", center=math.log(K),
        transform="log")
    assert not prob.stationary
    res = fb.solve(prob, nx=600, nt=150)
    assert res.value_at(100.0).item() == pytest.approx(
        bs_formula("put", 100.0, K, 0.05, 0.0, vol, T), abs=2e-4)


# ---------------------------------------------------------------- batching
@given(st.lists(st.tuples(st.floats(0.15, 0.45), st.floats(0.0, 0.08), st.floats(0.0, 0.05),
                          st.floats(0.3, 2.0)), min_size=2, max_size=4),
       st.sampled_from(["brennan-schwartz", "policy", "projection"]),
       st.sampled_from(["put", "call"]))
@settings(max_examples=6)
def test_batched_equals_looped(params, lcp, kind):
    # calls take the mirrored Brennan–Schwartz sweep, in the batched and the single-problem path
    vol, r, q, T = (torch.tensor(c, dtype=torch.float64) for c in zip(*params))
    K = torch.full_like(vol, 100.0)
    batch = fb.solve(fb.black_scholes(kind, K, r, vol, T, dividend=q), nx=60, nt=20, lcp=lcp)
    for i in range(len(params)):
        one = fb.solve(fb.black_scholes(kind, 100.0, r[i].item(), vol[i].item(), T[i].item(),
                                        dividend=q[i].item()), nx=60, nt=20, lcp=lcp)
        torch.testing.assert_close(batch.values[i], one.values[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(batch.boundary[1][i], one.boundary[1][0], rtol=1e-9,
                                   atol=1e-9, equal_nan=True)


def test_batched_mixed_puts_and_calls_via_generic_problem():
    # One batch holding a call (r = 0.03, q = 0.07) and a put (r = 0.07, q = 0.03): Brennan–Schwartz
    # sweeps each its own way (the call mirrored), and put-call symmetry
    # C(S, K, r, q) = P(K, S, q, r) at S = K = 100 makes the two values equal.
    K = 100.0
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)
    r = torch.tensor([0.03, 0.07], dtype=torch.float64)
    q = torch.tensor([0.07, 0.03], dtype=torch.float64)
    drift, vol, rate = fb.gbm_log_coefficients(r, 0.3, q)
    prob = fb.ObstacleProblem(
        payoff=lambda t, x: torch.clamp(sign[:, None] * (torch.exp(x) - K), min=0.0),
        x_min=math.log(K) - 2.0, x_max=math.log(K) + 2.0, maturity=1.0, drift=drift,
        vol=vol, rate=rate, center=math.log(K), transform="log", time_dependent_payoff=False)
    assert prob.batch_size == 2
    res = fb.solve(prob, nx=400, nt=100)
    assert res.side == ["right", "left"]
    call, put = res.value_at(100.0).tolist()
    assert call == pytest.approx(put, abs=2e-4)
    assert call > bs_formula("call", 100.0, K, 0.03, 0.07, 0.3, 1.0) + 0.05  # early exercise
    pol = fb.solve(prob, nx=400, nt=100, lcp="policy")
    torch.testing.assert_close(res.values, pol.values, rtol=0, atol=1e-9)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    good = fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0)
    with pytest.raises(ValueError, match="negative volatility"):
        fb.black_scholes("put", 100.0, 0.05, -0.2, 1.0)
    with pytest.raises(ValueError, match="nx"):
        fb.solve(good, nx=2)
    with pytest.raises(ValueError, match="nt"):
        fb.solve(good, nt=1)
    with pytest.raises(ValueError, match="unknown lcp"):
        fb.solve(good, lcp="gauss-seidel")
    with pytest.raises(ValueError, match="non-monotone"):
        fb.solve(good, nx=5, mesh=torch.tensor([4.0, 4.2, 4.1, 4.6, 5.0]))
    with pytest.raises(ValueError, match="even"):
        fb.solve(good, rannacher_steps=3)
    with pytest.raises(ValueError, match="theta"):
        fb.solve(good, theta=1.5)
    with pytest.raises(ValueError, match="conditionally stable"):
        fb.solve(good, theta=0.0)  # explicit Euler: unstable on this grid, refused
    with pytest.raises(ValueError, match="psor_max_iter"):
        fb.solve(good, nx=50, nt=10, lcp="psor", psor_max_iter=0)
    with pytest.raises(ValueError, match="max_iter"):
        z = torch.zeros(4, 1, dtype=torch.float64)
        fb.psor(z, z + 3.0, z, z, z, z, max_iter=0)
    with pytest.raises(ValueError, match="psor_omega"):
        fb.solve(good, nx=50, nt=10, lcp="psor", psor_omega="1.2")
    with pytest.raises(ValueError, match="has 5 nodes but nx = 800"):
        fb.solve(good, mesh=torch.tensor([4.0, 4.2, 4.4, 4.6, 5.0]))
    with pytest.raises(ValueError, match="width"):
        fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0, width=-1.0)
    with pytest.raises(ValueError, match="only used with exercise='bermudan'"):
        fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0, exercise="european", exercise_dates=[0.5])
    with pytest.raises(ValueError, match="NaN"):
        fb.black_scholes("put", 100.0, float("nan"), 0.2, 1.0)
    with pytest.raises(ValueError, match="kind"):
        fb.black_scholes("straddle", 100.0, 0.05, 0.2, 1.0)
    with pytest.raises(ValueError, match="needs exercise_dates"):
        fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0, exercise="bermudan")
    res = fb.solve(good, nx=50, nt=10)
    with pytest.raises(ValueError, match="outside the grid"):
        res.value_at(1e6)
    with pytest.raises(ValueError, match="batch"):
        res.value_at(torch.tensor([[90.0], [100.0]]))


def test_bad_coefficients_raise():
    base = dict(x_min=-1.0, x_max=1.0, maturity=1.0, vol=1.0)
    with pytest.raises(ValueError, match="payoff has shape"):
        fb.solve(fb.ObstacleProblem(payoff=lambda t, x: torch.zeros(x.shape[1] + 1), **base),
                 nx=20, nt=5, lcp="policy")
    with pytest.raises(ValueError, match="drift returned NaN"):
        fb.solve(fb.ObstacleProblem(payoff=lambda t, x: x.abs(),
                                    drift=lambda t, x: x * float("nan"), **base),
                 nx=20, nt=5, lcp="policy")
    with pytest.raises(ValueError, match="negative volatility"):
        fb.solve(fb.ObstacleProblem(payoff=lambda t, x: x.abs(), x_min=-1.0, x_max=1.0,
                                    maturity=1.0, vol=lambda t, x: -torch.ones_like(x)),
                 nx=20, nt=5, lcp="policy")
    with pytest.raises(ValueError, match="lower boundary value returned NaN"):
        fb.solve(fb.ObstacleProblem(payoff=lambda t, x: x.abs(),
                                    lower=lambda t, x: x * float("nan"), **base),
                 nx=20, nt=5, lcp="policy")
    with pytest.raises(ValueError, match="x_max must be larger"):
        fb.ObstacleProblem(payoff=0.0, x_min=1.0, x_max=0.0, maturity=1.0)
    with pytest.raises(ValueError, match="inconsistent batch"):
        fb.ObstacleProblem(payoff=0.0, x_min=torch.zeros(2), x_max=torch.ones(3), maturity=1.0)
    with pytest.raises(ValueError, match="boundary condition"):
        fb.ObstacleProblem(payoff=0.0, x_min=0.0, x_max=1.0, maturity=1.0, lower="neumann")
    with pytest.raises(fb.LCPConvergenceError):
        fb.solve(fb.brownian_linear_cost(0.5), nx=81, nt=10, lcp="psor", psor_max_iter=3)


def test_time_dependent_running_reward_is_integrated():
    # mu = sigma = r = 0, g = 0, European: V(0, x) = int_0^T f(t) dt; f(t) = t gives T^2 / 2, and
    # Crank–Nicolson (the trapezoidal rule in time) integrates a linear f exactly.
    prob = fb.ObstacleProblem(payoff=0.0, x_min=-1.0, x_max=1.0, maturity=2.0,
                              running=lambda t, x: t.expand_as(x), exercise="european",
                              lower=lambda t, x: (4.0 - t * t) / 2, upper=lambda t, x: (4.0 - t * t) / 2)
    assert not prob.stationary
    res = fb.solve(prob, nx=11, nt=20, rannacher_steps=0)
    torch.testing.assert_close(res.values, torch.full((1, 11), 2.0, dtype=torch.float64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,q,limit", [("put", 0.0, 100.0), ("put", 0.1, 50.0),
                                          ("call", 0.1, 100.0), ("call", 0.02, 250.0)])
def test_exercise_boundary_at_expiry(kind, q, limit):
    # Just before maturity S* -> K min(1, r/q) for a put and K max(1, r/q) for a call
    # (r = 0.05, K = 100; e.g. Kim 1990, Rev. Financial Studies 3).
    res = fb.solve(fb.black_scholes(kind, 100.0, 0.05, 0.2, 1.0, dividend=q), nx=800, nt=200)
    times, s_b = res.boundary
    assert 1.0 - times[0, -1].item() < 1e-3
    assert s_b[0, -1].item() == pytest.approx(limit, rel=0.015)
    # Monotone in time: the exercise region grows towards maturity.
    finite = s_b[0][torch.isfinite(s_b[0])]
    steps = finite[1:] - finite[:-1]
    assert bool((steps >= -1e-9).all()) if kind == "put" else bool((steps <= 1e-9).all())


@pytest.mark.parametrize("kind, q", [("put", 0.0), ("call", 0.08)])
def test_gamma_next_to_the_exercise_boundary_matches_the_closed_form_jump(kind, q):
    # At the free boundary V = g and V_S = g_S (smooth fit), so the PDE gives the one-sided gamma
    # in closed form: 1/2 sigma^2 S*^2 Gamma = r V - (r - q) S* V_S, i.e.
    # put: Gamma(S*+) = 2 r K / (sigma^2 S*^2); call (q > 0): Gamma(S*-) = 2 (q S* - r K) /
    # (sigma^2 S*^2); on the exercise side V = intrinsic, linear in S: Gamma = 0. A 9-node fit
    # straddling S* gave 0.0857 instead of 0.110 at S = 33.0 and 0.0062 instead of 0 at 32.8.
    K, r, sig = 40.0, 0.06, 0.2
    res = fb.solve(fb.black_scholes(kind, K, r, sig, 1.0, dividend=q), nx=800, nt=200)
    s_star = res.boundary[1][0, 0].item()
    if kind == "put":
        jump = 2 * r * K / (sig**2 * s_star**2)
        cont, ex = 1.0, -1.0  # continuation above S*, exercise below
    else:
        jump = 2 * (q * s_star - r * K) / (sig**2 * s_star**2)
        cont, ex = -1.0, 1.0
    i = int(torch.searchsorted(res.state[0], torch.tensor(s_star, dtype=torch.float64)))
    h = (res.state[0, i] - res.state[0, i - 1]).item()  # node spacing at S*
    for k in (0.2, 0.7, 1.5):
        assert res.gamma_at(s_star + cont * k * h).item() == pytest.approx(jump, rel=1e-2)
        assert abs(res.gamma_at(s_star + ex * k * h).item()) < 1e-2 * jump  # O(h^2) fit bias


def test_black_scholes_batch_size_mismatch_names_the_arguments():
    with pytest.raises(ValueError, match=r"inconsistent batch sizes.*'strike': 2.*'vol': 3"):
        fb.black_scholes(strike=torch.tensor([90.0, 100.0]), vol=torch.tensor([0.1, 0.2, 0.3]))


def test_spot_range_must_cover_the_strike_region():
    # K = 100 put on (120, 200) gave V(150) = 0.0 (the near-side far-field value drops the time
    # value) instead of ~0.096: now refused, naming the range it needs.
    with pytest.raises(ValueError, match=r"spot_range \(120.0, 200.0\) does not cover"):
        fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0, spot_range=(120.0, 200.0))
    with pytest.raises(ValueError, match="problem 1 of the batch"):
        fb.black_scholes("put", torch.tensor([100.0, 100.0]), 0.05, torch.tensor([0.05, 0.2]),
                         1.0, spot_range=(70.0, 150.0))
    # A range just covering K e^{-m} .. K e^{m} (m = 3 sigma sqrt(T) + |r| T = 0.65: 52.2 .. 191.6)
    # is accepted and agrees with the default grid (ln K -+ 1.05) at S = 150.
    ref = fb.solve(fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0), 800, 200).value_at(150.0)
    got = fb.solve(fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0, spot_range=(52.0, 192.0)),
                   800, 200).value_at(150.0)
    assert got.item() == pytest.approx(ref.item(), abs=2e-3)
    assert ref.item() == pytest.approx(0.0964, abs=1e-3)


def test_width_must_reach_the_strike_region():
    # The same minimum for `width` (ln K -+ width): m = 3 sigma sqrt(T) + |r| T = 0.65 here.
    # width 0.3 put the far-field values inside the time-value region: a wrong price, silently.
    with pytest.raises(ValueError, match=r"width 0.3 is narrower .* here 0.65"):
        fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0, width=0.3)
    ref = fb.solve(fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0), 800, 200).value_at(100.0)
    got = fb.solve(fb.black_scholes("put", 100.0, 0.05, 0.2, 1.0, width=0.66), 800,
                   200).value_at(100.0)
    assert got.item() == pytest.approx(ref.item(), abs=2e-3)


def test_result_times_has_one_column_per_step_taken():
    # Result.times / edges are (B, stats["steps"]): fewer than nt on the graded (American) grid.
    res = fb.solve(fb.black_scholes("put", 40.0, 0.06, 0.2, 1.0), nx=100, nt=50)
    n = res.stats["steps"]
    assert n < 50 and res.times.shape == res.lower_edge.shape == (1, n)
    assert res.times[0, 0].item() == 0.0 and res.times[0, -1].item() < 1.0
    uni = fb.solve(fb.black_scholes("put", 40.0, 0.06, 0.2, 1.0), nx=100, nt=50,
                   time_grid="uniform")
    assert uni.times.shape == (1, 50) and uni.times[0, -1].item() == pytest.approx(1.0 - 1 / 50)
