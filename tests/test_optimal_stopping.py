"""solvers.stopping against closed forms, published values and QuantLib.

Known answers (../shared/REFERENCES.md and the cited papers):
- secretary problem: n = 10 -> 0.398690 (skip 3), n = 100 -> 0.371043 (skip 37);
- die game, n = 1..6 rolls: 3.5, 4.25, 14/3, 4.944444, 5.129630, 5.274691;
- Brownian motion with linear cost c: sup E[|B_tau| - c tau] = 1/(4c), tau = exit of
  (-1/(2c), 1/(2c));
- American put on QuantLib's CRR tree (BinomialVanillaEngine "crr", same steps);
- Longstaff & Schwartz (2001) Table 1, S = 36, K = 40, r = 0.06, sigma = 0.2, T = 1, 50 dates per
  year: simulated 4.472 (s.e. 0.010), finite difference 4.478.
"""

from __future__ import annotations

import functools
import math

import pytest
import QuantLib as ql  # a dev dependency (setup.cfg): a missing peer fails, never skips
import torch
from hypothesis import given
from hypothesis import strategies as hst

from solvers import stopping as st

F64 = torch.float64


# ----------------------------------------------------------------------------- exact chains


def secretary(n):
    # state at candidate t (1-based): 1 if relatively best so far; P(next is rel. best) = 1/(t+1)
    P = [torch.tensor([[t / (t + 1), 1 / (t + 1)]] * 2, dtype=F64) for t in range(1, n)]
    R = [torch.tensor([0.0, t / n], dtype=F64) for t in range(1, n + 1)]
    return st.backward_induction(P, R, initial=1)


@pytest.mark.parametrize("n, value, skip", [(10, 0.398690, 3), (100, 0.371043, 37)])
def test_secretary(n, value, skip):
    res = secretary(n)
    assert res.value == pytest.approx(value, abs=5e-7)
    first_stop = min(t for t in range(n) if res.stop[t][1]) + 1   # 1-based candidate
    assert first_stop == skip + 1
    assert not any(bool(res.stop[t][0]) for t in range(n - 1))    # never stop on a non-best


def test_die_game():
    P = torch.full((6, 6), 1 / 6, dtype=F64)
    expected = [3.5, 4.25, 14 / 3, 4.944444, 5.129630, 5.274691]
    for n, v in enumerate(expected, start=1):
        R = torch.arange(1.0, 7.0, dtype=F64).expand(n, 6)
        res = st.backward_induction(P, R, initial=torch.full((6,), 1 / 6, dtype=F64))
        assert res.value == pytest.approx(v, abs=1e-6)


def test_die_game_sparse_and_per_step_matrices():
    # the same chain given as a list of sparse matrices: 3 rolls -> 14/3
    P = torch.full((6, 6), 1 / 6, dtype=F64).to_sparse()
    R = [torch.arange(1.0, 7.0, dtype=F64)] * 3
    res = st.backward_induction([P, P], R, initial=torch.full((6,), 1 / 6, dtype=F64))
    assert res.value == pytest.approx(14 / 3, abs=1e-12)
    # optimal rule: with two rolls left keep 5 and 6, with one left keep 4, 5, 6
    assert res.stop[0].tolist() == [False] * 4 + [True] * 2
    assert res.stop[1].tolist() == [False] * 3 + [True] * 3


@given(hst.integers(0, 2**31 - 1))
def test_backward_induction_dominates_fixed_times(seed):
    # V_0 >= E[Z_t] for every deterministic time t (fixed-time rules are stopping times; E[Z_t]
    # in closed form by matrix products), and V_0 <= the largest reward anywhere
    g = torch.Generator().manual_seed(seed)
    S, T = 4, 5
    P = torch.rand(T - 1, S, S, generator=g, dtype=F64) + 0.05
    P = P / P.sum(-1, keepdim=True)
    Rw = torch.randn(T, S, generator=g, dtype=F64)
    v = st.backward_induction(P, Rw, initial=0).value
    dist = torch.zeros(S, dtype=F64)
    dist[0] = 1.0
    for t in range(T):
        assert v >= float(dist @ Rw[t]) - 1e-12
        if t < T - 1:
            dist = dist @ P[t]
    assert v <= float(Rw.amax(dim=1).max()) + 1e-12


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_brownian_linear_cost(c):
    # Random walk with dx = 0.05, dt = dx^2 embedded in Brownian motion: any walk stopping time is
    # a Brownian one, so the lattice value is <= 1/(4c); the exit of (-a, a), a = 1/(2c), lies on
    # the lattice and attains it up to the horizon truncation (exit-time tail ~ exp(-20)).
    dx, horizon = 0.05, 20.0
    steps = int(round(horizon / dx**2))
    x = dx * torch.arange(-40, 41, dtype=F64)
    rewards = [x.abs() - c * i * dx**2 for i in range(steps + 1)]

    def expect(t, v):
        vp = torch.cat([v[1:], v[-1:]])   # edges lie deep in the stopping region
        vm = torch.cat([v[:1], v[:-1]])
        return 0.5 * (vp + vm)

    res = st.backward_induction(expect, rewards, initial=40)
    assert res.value == pytest.approx(1 / (4 * c), abs=1e-6)
    a_steps = round(1 / (2 * c) / dx)
    stop0 = res.stop[0]
    assert stop0[40 + a_steps] and stop0[40 - a_steps]
    assert not stop0[40 - a_steps + 1: 40 + a_steps].any()


def ql_american(S, K, r, sig, T, n, q=0.0, kind="put", european=False):
    today = ql.Date(15, 1, 2025)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    proc = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(S)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, q, dc)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sig, dc)))
    typ = ql.Option.Put if kind == "put" else ql.Option.Call
    mat = today + int(round(365 * T))
    ex = ql.EuropeanExercise(mat) if european else ql.AmericanExercise(today, mat)
    opt = ql.VanillaOption(ql.PlainVanillaPayoff(typ, K), ex)
    opt.setPricingEngine(ql.BinomialVanillaEngine(proc, "crr", n))
    return opt.NPV()


@pytest.mark.parametrize("S, K, r, sig, T, q, kind", [
    (36.0, 40.0, 0.06, 0.2, 1.0, 0.0, "put"),
    (100.0, 100.0, 0.05, 0.3, 2.0, 0.02, "put"),
    (90.0, 100.0, 0.03, 0.25, 1.0, 0.05, "call"),
])
def test_crr_lattice_vs_quantlib(S, K, r, sig, T, q, kind):
    n = 200
    lat = st.crr_lattice(S, K, r, sig, T, n, kind=kind, dividend=q, probability="drift")
    ours = st.backward_induction(lat.expect, lat.rewards).value
    assert ours == pytest.approx(ql_american(S, K, r, sig, T, n, q, kind), abs=1e-10)


def test_bermudan_with_only_maturity_is_european():
    # exercise only at maturity: the lattice value is the European one; it matches QuantLib's
    # CRR European to round-off and the Black-Scholes formula to the lattice error O(1/n)
    S, K_, r, sig, T_, n = 36.0, 40.0, 0.06, 0.2, 1.0, 2000
    lat = st.crr_lattice(S, K_, r, sig, T_, n, probability="drift", exercise_steps=[])
    ours = st.backward_induction(lat.expect, lat.rewards).value
    assert ours == pytest.approx(ql_american(S, K_, r, sig, T_, n, european=True), abs=1e-10)
    d1 = (math.log(S / K_) + (r + sig**2 / 2) * T_) / (sig * math.sqrt(T_))
    d2 = d1 - sig * math.sqrt(T_)
    N = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    bs = K_ * math.exp(-r * T_) * N(-d2) - S * N(-d1)
    assert ours == pytest.approx(bs, abs=2e-3)


# ----------------------------------------------------------------------------- American put

S0, K, R, SIG, T = 36.0, 40.0, 0.06, 0.2, 1.0


@functools.cache
def bermudan_put_exact(n_dates, per_date=100):
    # fine CRR lattice with exercise restricted to the n_dates dates (and time 0)
    lat = st.crr_lattice(S0, K, R, SIG, T, n_dates * per_date,
                         exercise_steps=range(0, n_dates * per_date + 1, per_date))
    return st.backward_induction(lat.expect, lat.rewards).value


def put_setup(n_dates):
    gbm = st.GeometricBrownianMotion(S0, R, SIG, torch.linspace(0, T, n_dates + 1, dtype=F64))
    disc = gbm.discount()

    def reward(p):
        return disc * (K - p[..., 0]).clamp_min(0)

    return gbm, reward


def test_bermudan_lattice_matches_ls_finite_difference():
    # LS (2001) Table 1 "finite difference" 4.478 is the 50-date value; 50 and 100 lattice steps
    # per date agree to 1e-4, so the lattice is the exact reference below.
    v50, v100 = bermudan_put_exact(50, 50), bermudan_put_exact(50, 100)
    assert abs(v50 - v100) < 1e-4
    assert v100 == pytest.approx(4.478, abs=5e-4)


def test_longstaff_schwartz_american_put():
    exact = bermudan_put_exact(50)
    gbm, reward = put_setup(50)
    g = torch.Generator().manual_seed(11)
    train = gbm.sample(50_000, g, antithetic=True)
    fit = st.longstaff_schwartz(train / K, reward(train), basis="laguerre3", itm="positive")
    test = gbm.sample(100_000, g)
    low = st.evaluate(fit.policy, test / K, reward(test))
    # a lower bound: not above the exact value (3 s.e.), and close to it (LS basis is good)
    assert low.value <= exact + 3 * low.stderr
    assert low.value >= exact - 0.02 - 3 * low.stderr
    # agrees with the published LS simulation 4.472 (s.e. 0.010) within 3 combined s.e.
    assert abs(low.value - 4.472) <= 3 * math.hypot(low.stderr, 0.010)


def test_put_lower_and_dual_upper_bracket_exact():
    n_dates = 10
    exact = bermudan_put_exact(n_dates)
    gbm, reward = put_setup(n_dates)
    g = torch.Generator().manual_seed(5)
    train = gbm.sample(40_000, g, antithetic=True)
    fit = st.longstaff_schwartz(train, reward(train), basis="poly3", itm="positive")
    b = st.bounds(fit.policy, gbm, reward, n_lower=50_000, n_outer=300, n_inner=300, generator=g)
    assert b.lower.value <= b.upper.value
    assert b.lower.ci[0] <= exact <= b.upper.ci[1]
    assert b.lower.value >= exact - 0.03
    assert b.upper.value <= exact + 0.1      # AB report duality gaps of a few cents on this put


def test_tsitsiklis_van_roy_target_is_a_valid_lower_bound():
    n_dates = 10
    exact = bermudan_put_exact(n_dates)
    gbm, reward = put_setup(n_dates)
    g = torch.Generator().manual_seed(6)
    train = gbm.sample(40_000, g, antithetic=True)
    fit = st.longstaff_schwartz(train, reward(train), basis="poly3", itm="positive",
                                target="value")
    test = gbm.sample(50_000, g)
    low = st.evaluate(fit.policy, test, reward(test))
    # TvR is known to be less accurate than LS (Stentoft 2004); still a lower bound, within 2%
    assert low.value <= exact + 3 * low.stderr
    assert low.value >= 0.98 * exact


def test_neural_stopping_put():
    n_dates = 10
    exact = bermudan_put_exact(n_dates)
    gbm, reward = put_setup(n_dates)
    g = torch.Generator().manual_seed(2)
    train = gbm.sample(2**14, g, antithetic=True)
    fit = st.neural(train / K, reward(train), epochs=4, batch_size=1024, lr=1e-2, seed=0)
    test = gbm.sample(2**16, g)
    low = st.evaluate(fit.policy, test / K, reward(test))
    assert low.value <= exact + 3 * low.stderr
    assert abs(low.value - exact) <= 0.01 * exact
    # online use, one time at a time, agrees with the offline stop index
    x = test[:1000] / K
    idx = fit.policy.stop_index(x)
    done = torch.zeros(1000, dtype=torch.bool)
    online = torch.full((1000,), -1)
    for t in range(n_dates + 1):
        s = fit.policy.should_stop(t, x[:, t]) & ~done
        assert torch.equal(fit.policy.should_stop(t, x[:, t]), fit.policy.score(t, x[:, t]) >= 0)
        online[s] = t
        done |= s
    assert torch.equal(online, idx)


# ----------------------------------------------------------------------------- finite chain


def random_chain(seed=3, S=5, T=6):
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(T - 1, S, S, generator=g, dtype=F64) ** 2
    P = P / P.sum(-1, keepdim=True)
    Rw = torch.randn(T, S, generator=g, dtype=F64)     # rewards of both signs
    return P, Rw


def one_hot(S):
    def basis(x):
        return torch.nn.functional.one_hot(x[:, 0].round().long(), S).to(F64)
    return basis


def test_chain_lsm_indicator_basis_and_dual_bracket_exact():
    S, T = 5, 6
    P, Rw = random_chain(S=S, T=T)
    exact = st.backward_induction(P, Rw, initial=0)
    margin = min(float((Rw[t] - exact.continuation[t]).abs().min()) for t in range(T - 1))
    assert margin > 0.02          # no near-ties, so the fitted rule must equal the exact one
    chain = st.MarkovChain(P, initial=0)
    g = torch.Generator().manual_seed(0)
    paths = chain.sample(40_000, g)
    fit = st.longstaff_schwartz(paths, st.MarkovChain.gather(Rw, paths), basis=one_hot(S))
    states = torch.arange(S, dtype=F64)[:, None]
    for t in range(T):
        got = fit.policy.should_stop(t, states, Rw[t])
        # every state is reached at t >= 1; only the initial state 0 at t = 0
        sel = slice(None) if t else slice(0, 1)
        assert torch.equal(got[sel], exact.stop[t][sel])
    # continuation value of the indicator regression = empirical conditional mean (~exact)
    reached = [t for t in range(1, T - 1)]
    for t in reached:
        c = fit.policy.continuation(t, states)
        assert torch.allclose(c, exact.continuation[t], atol=0.05)

    def reward(p):
        return st.MarkovChain.gather(Rw, p)

    b = st.bounds(fit.policy, chain, reward, n_lower=40_000, n_outer=1000, n_inner=100,
                  generator=g)
    # lower <= exact <= upper, each within its own 3 standard errors
    assert b.lower.value <= exact.value + 3 * b.lower.stderr
    assert b.upper.value >= exact.value - 3 * b.upper.stderr
    assert b.ci[0] <= exact.value <= b.ci[1]
    # with the optimal policy the AB martingale is the Doob martingale of V: the bound is tight
    # up to inner-sampling noise
    assert b.upper.value - exact.value < 0.05
    # the chain's own optimal policy gives the same lower bound
    assert torch.equal(exact.policy.score(1, states) >= 0, exact.stop[1])
    low_exact = st.evaluate(exact.policy, *(lambda p: (p, reward(p)))(chain.sample(40_000, g)))
    assert abs(low_exact.value - exact.value) <= 3.5 * low_exact.stderr


# ----------------------------------------------------------------------------- depth-like


def test_depth_like_deterministic_loss_curves():
    # loss_t = a rho^t + b, reward = -loss_t - c t: the optimum is the first t where one more
    # step gains at most c, i.e. a rho^t (1 - rho) <= c (convex curve: OSLA is optimal).
    rho, b, c, T = 0.7, 0.1, 0.02, 15
    g = torch.Generator().manual_seed(4)
    a = 0.5 + 1.5 * torch.rand(4000, generator=g, dtype=F64)
    t = torch.arange(T, dtype=F64)
    loss = a[:, None] * rho**t + b
    rewards = -loss - c * t
    t_star = torch.ceil(torch.log(c / (a * (1 - rho))) / math.log(rho)).clamp(0, T - 1).long()
    best = rewards.gather(1, t_star[:, None]).squeeze(1)
    assert torch.all(best >= rewards.max(dim=1).values - 1e-12)      # the closed form is optimal
    # feature: the current loss (deterministic dynamics, so it is Markov)
    fit = st.longstaff_schwartz(loss[:, :, None], rewards, basis="poly3")
    fit_fn = st.longstaff_schwartz(loss[:, :, None], reward_fn=lambda f: -f[..., 0] - c * t,
                                   basis="poly3")
    assert fit_fn.value == pytest.approx(float(best.mean()), abs=2e-4)
    hit = (fit.stop_index == t_star).double().mean()
    assert hit >= 0.97
    assert fit.value == pytest.approx(float(best.mean()), abs=2e-4)
    # rewards unobserved at decision time (a network's loss needs the label): the policy
    # regresses the reward on the features and must still find the same depth
    idx_blind = fit.policy.stop_index(loss[:, :, None])
    assert (idx_blind == t_star).double().mean() >= 0.97


@pytest.mark.parametrize("method", ["lsm", "neural"])
def test_diminishing_returns_expected_depth(method):
    # Depth with geometric diminishing returns (seeds_spec 1.3): the layer k gains a rho^k,
    # each layer costs c, a ~ Exp(1) per input. Reward of stopping at k: sum of gains - c k.
    # Optimal: stop at the first k with a rho^k <= c, so
    # E[tau*] = sum_k P(a rho^k > c) = sum_{k>=0} exp(-c rho^{-k}) (= 6.3211 for rho = 1/2,
    # c = 0.01; the research note's simulation gave 6.32).
    rho, c, T = 0.5, 0.01, 20
    e_tau = sum(math.exp(-c / rho**k) for k in range(200))
    assert e_tau == pytest.approx(6.32, abs=5e-3)
    g = torch.Generator().manual_seed(0)
    a = -torch.log(torch.rand(20_000, generator=g, dtype=F64))
    k = torch.arange(T, dtype=F64)
    gain = a[:, None] * rho**k                       # what the next layer would add
    rewards = a[:, None] * (1 - rho**k) / (1 - rho) - c * k
    k_star = torch.ceil(torch.log(c / a) / math.log(rho)).clamp(0, T - 1).long()
    best = float(rewards.gather(1, k_star[:, None]).mean())
    if method == "lsm":
        fit = st.longstaff_schwartz(gain[:, :, None], rewards, basis="poly3")
    else:
        fit = st.neural(torch.log(gain)[:, :, None], rewards, epochs=3, batch_size=512, lr=1e-2)
    # the value is flat near the boundary: near-optimal value, expected depth within 5 %
    # (no upper check: `best` is the pathwise maximum, which no rule can exceed)
    assert fit.value >= best * (1 - 1e-3)
    assert float(fit.stop_index.double().mean()) == pytest.approx(e_tau, rel=0.05)


# ----------------------------------------------------------------------------- invariants


@given(hst.integers(0, 2**31 - 1))
def test_lsm_path_permutation_invariance(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 4, 2, generator=g, dtype=F64)
    r = torch.randn(300, 4, generator=g, dtype=F64)
    perm = torch.randperm(300, generator=g)
    f1 = st.longstaff_schwartz(x, r, basis="poly2")
    f2 = st.longstaff_schwartz(x[perm], r[perm], basis="poly2")
    assert f1.value == pytest.approx(f2.value, abs=1e-9)
    assert torch.equal(f1.stop_index[perm], f2.stop_index)


@given(hst.integers(0, 2**31 - 1), hst.integers(1, 50))
def test_policy_batch_independence(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 3, 2, generator=g, dtype=F64)
    r = torch.randn(200, 3, generator=g, dtype=F64)
    pol = st.longstaff_schwartz(x, r, basis="poly2").policy
    new = torch.randn(n, 2, generator=g, dtype=F64)
    rn = torch.randn(n, generator=g, dtype=F64)
    whole = pol.should_stop(1, new, rn)
    single = torch.cat([pol.should_stop(1, new[i: i + 1], rn[i: i + 1]) for i in range(n)])
    assert torch.equal(whole, single)
    # the signed score (StoppingRule contract) is reward - continuation, >= 0 exactly on stops
    s = pol.score(1, new, rn)
    assert torch.allclose(s, rn - pol.continuation(1, new), atol=1e-12)
    assert torch.equal(s >= 0, whole)
    assert torch.isinf(pol.score(2, new)).all()


def test_last_time_always_stops_and_single_time():
    x = torch.randn(10, 1, 1, dtype=F64)
    r = torch.randn(10, 1, dtype=F64)
    fit = st.longstaff_schwartz(x, r)
    assert fit.value == pytest.approx(float(r.mean()))      # one date: "European" value
    assert fit.policy.should_stop(0, x[:, 0]).all()


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs():
    x = torch.randn(20, 4, 2)
    r = torch.randn(20, 4)
    with pytest.raises(ValueError, match="rewards must have shape"):
        st.longstaff_schwartz(x, r[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        st.longstaff_schwartz(x, torch.where(r > 0, r, torch.nan))
    with pytest.raises(ValueError, match="NaN"):
        st.longstaff_schwartz(torch.where(x > 0, x, torch.nan), r)
    with pytest.raises(ValueError, match="infinite"):
        st.longstaff_schwartz(x, torch.where(r > 0, r, -torch.inf))
    with pytest.raises(ValueError, match="n_times"):
        st.longstaff_schwartz(torch.zeros(5, 0, 1), torch.zeros(5, 0))
    with pytest.raises(ValueError, match="n_paths"):
        st.longstaff_schwartz(torch.zeros(0, 3, 1), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="basis must be one of"):
        st.longstaff_schwartz(x, r, basis="poly9")
    with pytest.raises(ValueError, match="target"):
        st.longstaff_schwartz(x, r, target="both")
    with pytest.raises(ValueError, match="ridge"):
        st.longstaff_schwartz(x, r, ridge=-1.0)
    with pytest.raises(ValueError, match="itm"):
        st.longstaff_schwartz(x, r, itm="negative")
    with pytest.raises(ValueError, match="exactly one of"):
        st.longstaff_schwartz(x, r, reward_fn=lambda f: f[..., 0])
    with pytest.raises(TypeError, match="features"):
        st.longstaff_schwartz("paths", r)
    with pytest.raises(ValueError, match="epochs"):
        st.neural(x, r, epochs=0)
    pol = st.longstaff_schwartz(x, r).policy
    with pytest.raises(ValueError, match="time_index"):
        pol.should_stop(4, x[:, 0])
    with pytest.raises(ValueError, match="features_t"):
        pol.should_stop(0, torch.randn(20, 3))
    with pytest.raises(ValueError, match="fitted on"):
        pol.stop_index(torch.randn(20, 5, 2))
    with pytest.raises(ValueError, match="rewards_t"):
        pol.should_stop(0, x[:, 0], torch.randn(19))
    with pytest.raises(TypeError, match="StoppingPolicy"):
        st.evaluate("policy", x, r)
    # backward induction
    P = torch.full((3, 3), 1 / 3, dtype=F64)
    with pytest.raises(ValueError, match="probability distributions"):
        st.backward_induction(P * 2, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="must have shape"):
        st.backward_induction(P, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        st.backward_induction(P, torch.full((3, 3), torch.nan))
    with pytest.raises(ValueError, match="last time"):
        st.backward_induction(P, torch.tensor([[0.0] * 3, [-math.inf] * 3]))
    with pytest.raises(ValueError, match="initial"):
        st.backward_induction(P, torch.zeros(3, 3), initial=torch.tensor([0.5, 0.6, 0.0]))
    with pytest.raises(ValueError, match="probability"):
        st.crr_lattice(36, 40, 0.06, 0.2, 1.0, 10, probability="jr")
    with pytest.raises(ValueError, match="vol"):
        st.crr_lattice(36, 40, 0.06, -0.2, 1.0, 10)
    with pytest.raises(ValueError, match="rate must be a finite number"):
        st.crr_lattice(36, 40, math.nan, 0.2, 1.0, 10)      # was "up probability nan"
    with pytest.raises(ValueError, match="dividend must be a finite number"):
        st.crr_lattice(36, 40, 0.06, 0.2, 1.0, 10, dividend=math.inf)
    with pytest.raises(ValueError, match="exercise_steps must be integer"):
        st.crr_lattice(36, 40, 0.06, 0.2, 1.0, 10, exercise_steps=[2.5])  # was truncated to 2
    with pytest.raises(TypeError, match="dtype"):
        st.neural(x, r, epochs=1, dtype="float32")
    with pytest.raises(ValueError, match="time_index"):
        pol.should_stop("1", x[:, 0])
    # dual and simulators
    fbm = st.FractionalBrownianMotion(0.7, torch.linspace(0.1, 1, 4))
    bm = st.BrownianMotion(torch.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="not Markov"):
        st.dual_upper_bound(pol, fbm, lambda p: p[..., 0])
    with pytest.raises(ValueError, match="n_inner"):
        st.dual_upper_bound(st.longstaff_schwartz(torch.randn(20, 4, 1), r).policy, bm,
                            lambda p: p[..., 0], n_inner=0)
    with pytest.raises(ValueError, match="times"):
        st.dual_upper_bound(pol, st.BrownianMotion(torch.linspace(0, 1, 3), dim=2),
                            lambda p: p[..., 0])
