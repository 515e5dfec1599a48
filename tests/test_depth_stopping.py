"""Learned stopping rules on continuous depth: hazard, free boundary, event boundary.

Known answers: closed forms of the hazard objective (constant intensity, exponential loss curve),
Monte Carlo over sampled stopping times, the optimal rule of deterministic convex loss curves
(first time l + c t stops decreasing), finite differences for the event-time gradient, and
each sample solved alone for per-sample halting in a batch.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from odedepth import DepthTrajectory
from odedepth.flows import ContinuousDepthClassifier, MLPField, ODEBlock
from odedepth.losses import FlowObjective, expected_stopped_loss, flow_objective, stopped_objective
from odedepth.stopping import (
    EventBoundaryRule,
    FreeBoundaryRule,
    HazardRule,
    MaxProbability,
    RuleFeatures,
)

TIGHT = dict(method="dopri5", rtol=1e-9, atol=1e-11)


class Decay(nn.Module):
    """h' = -a h (closed form h0 e^{-a t})."""

    def __init__(self, a=1.0):
        super().__init__()
        self.a = a

    def forward(self, t, h):
        return -self.a * h


def _constant_hazard(lam, state_dim=1):
    rule = HazardRule(RuleFeatures("state", t1=1.0, state_dim=state_dim), hidden=0)
    with torch.no_grad():
        rule.net.weight.zero_()
        rule.net.bias.fill_(math.log(math.expm1(lam)))
    return rule.double()


def _first_col_loss(logits, y):
    return logits[:, 0] + 0.1  # l(t) = h(t) + 0.1 on the decaying flow


# ----------------------------------------------------------------------------- hazard
@pytest.mark.parametrize("lam,c,gamma,T", [(1.5, 0.0, 0.0, 1.0), (0.7, 0.2, 0.3, 2.0)])
def test_hazard_objective_closed_form_constant_intensity(lam, c, gamma, T):
    # l(t) = e^{-t} + 0.1, S(t) = e^{-lam t}:
    # E[l(tau)] = int_0^T lam e^{-lam t} l dt + e^{-lam T} l(T), E[tau] = (1 - e^{-lam T}) / lam,
    # E[int_0^tau gamma l] = gamma int_0^T l e^{-lam t} dt.
    block = ODEBlock(Decay(1.0), t1=T, **TIGHT).double()
    rule = _constant_hazard(lam)
    obj = FlowObjective(nn.Identity(), rule=rule, cost=c, stage_weight=gamma,
                        loss_fn=_first_col_loss, t1=T)
    h0 = torch.ones(3, 1, dtype=torch.float64)
    v = flow_objective(block, h0, torch.zeros(3, dtype=torch.long), obj)
    int_l_s = (1 - math.exp(-(lam + 1) * T)) / (lam + 1) + 0.1 * (1 - math.exp(-lam * T)) / lam
    stopped = lam * int_l_s + math.exp(-lam * T) * (math.exp(-T) + 0.1)
    e_tau = (1 - math.exp(-lam * T)) / lam
    expected = stopped + c * e_tau + gamma * int_l_s
    assert torch.allclose(v.stopped_loss, torch.full_like(v.total, stopped), atol=1e-8)
    assert torch.allclose(v.expected_tau, torch.full_like(v.total, e_tau), atol=1e-8)
    assert torch.allclose(v.total, torch.full_like(v.total, expected), atol=1e-8)


def test_hazard_objective_equals_monte_carlo_over_sampled_stopping_times():
    torch.manual_seed(3)
    d, T, c, gamma = 4, 1.5, 0.2, 0.3
    field = MLPField(d, 16, time="concat", t1=T).double()
    head = nn.Linear(d, 3).double()
    rule = HazardRule(RuleFeatures("both", t1=T, state_dim=d), hidden=8).double()
    with torch.no_grad():  # make the intensity vary strongly along the paths
        rule.net[0].weight.mul_(6.0)
        rule.net[2].weight.normal_(0, 1.0)
    block = ODEBlock(field, t1=T, **TIGHT)
    h0 = torch.randn(3, d, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    obj = FlowObjective(head, rule=rule, cost=c, stage_weight=gamma, t1=T)
    with torch.no_grad():
        exact = flow_objective(block, h0, y, obj).total
        # Monte Carlo: the same fixed trajectories on a fine grid, tau = inf{t: Lambda >= E}
        grid = torch.linspace(0, T, 3001, dtype=torch.float64)
        hs = block.solve(h0, t_eval=grid).hs                   # (3, n, d)
        flat = hs.reshape(-1, d)
        logits = head(flat)
        lam = rule.hazard(grid.repeat(3), flat, logits).reshape(3, -1).numpy()
        ell = nn.functional.cross_entropy(logits, y.repeat_interleave(len(grid)),
                                          reduction="none").reshape(3, -1).numpy()
    g = grid.numpy()
    dt = np.diff(g)
    cum_lam = np.concatenate([np.zeros((3, 1)), np.cumsum(0.5 * (lam[:, 1:] + lam[:, :-1]) * dt,
                                                          axis=1)], axis=1)
    cum_stage = np.concatenate([np.zeros((3, 1)), np.cumsum(
        0.5 * gamma * (ell[:, 1:] + ell[:, :-1]) * dt, axis=1)], axis=1)
    rng = np.random.default_rng(0)
    n_mc = 40_000
    for i in range(3):
        e = rng.exponential(size=n_mc)
        tau = np.interp(e, cum_lam[i], g, right=T)          # Lambda is increasing
        tau = np.where(e >= cum_lam[i, -1], T, tau)
        realised = np.interp(tau, g, ell[i]) + c * tau + np.interp(tau, g, cum_stage[i])
        se = realised.std() / math.sqrt(n_mc)
        assert abs(realised.mean() - float(exact[i])) < 3 * se + 1e-4, (i, realised.mean(),
                                                                         float(exact[i]), se)


def test_hazard_objective_gradcheck_float64():
    torch.manual_seed(0)
    d, T = 2, 1.0
    field = MLPField(d, 4, time="concat").double()
    rule = HazardRule(RuleFeatures("state", t1=T, state_dim=d), hidden=0).double()
    block = ODEBlock(field, t1=T, method="rk4", dt=0.1)
    y = torch.tensor([0, 1])

    def fn(h0, head_w):
        head = lambda h: h @ head_w  # noqa: E731
        obj = FlowObjective(head, rule=rule, cost=0.3, stage_weight=0.2, t1=T)
        return flow_objective(block, h0, y, obj).total

    h0 = torch.randn(2, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (h0, w), eps=1e-6, atol=1e-6)
    # and w.r.t. the rule's own parameters (given as tensors to a functional copy)
    wr = rule.net.weight.detach().clone().requires_grad_(True)
    br = rule.net.bias.detach().clone().requires_grad_(True)

    def fn_rule(weight, bias):
        o = FlowObjective(lambda h: h @ w.detach(), rule=_FunctionalHazard(rule, weight, bias),
                          cost=0.3, t1=T)
        return flow_objective(block, h0.detach(), y, o).total

    assert torch.autograd.gradcheck(fn_rule, (wr, br), eps=1e-6, atol=1e-6)


class _FunctionalHazard:
    """HazardRule with its linear intensity's parameters given as tensors (for gradcheck)."""

    def __init__(self, rule, weight, bias):
        self.rule, self.weight, self.bias = rule, weight, bias

    def hazard(self, t, h, logits):
        x = self.rule.features(t, h, logits)
        return nn.functional.softplus(x @ self.weight.T + self.bias)[:, 0]


def test_hazard_halting_probs_are_ponder_net_geometric_law():
    lam, L = 0.4, 6
    rule = _constant_hazard(lam, state_dim=1)
    traj = DepthTrajectory(depths=torch.arange(1.0, L + 1, dtype=torch.float64),
                           outputs=torch.zeros(2, L, 3, dtype=torch.float64),
                           states=torch.zeros(2, L, 1, dtype=torch.float64))
    p = rule.halting_probs(traj)
    q = 1 - math.exp(-lam)  # per-block halting probability
    expected = [(1 - q) ** k * q for k in range(L - 1)] + [(1 - q) ** (L - 1)]
    assert torch.allclose(p[0], torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    # median rule: first k with Lambda_k = lam (k+1) >= log 2
    assert rule.stop_index(traj).tolist() == [math.ceil(math.log(2) / lam) - 1] * 2
    # discrete expected objective with these probabilities: sum_k p_k (l_k + c d_k)
    y = torch.zeros(2, dtype=torch.long)
    val = expected_stopped_loss(traj, y, rule, 0.1, reduction="none")
    ref = sum(pk * (math.log(3) + 0.1 * (k + 1)) for k, pk in enumerate(expected))
    assert torch.allclose(val, torch.full_like(val, ref), atol=1e-12)


def test_hazard_inference_stops_at_median_of_constant_intensity():
    lam = 2.0
    block = ODEBlock(Decay(1.0), t1=3.0, **TIGHT).double()
    rule = _constant_hazard(lam)
    sol = block.solve(torch.ones(4, 1, dtype=torch.float64), stop=rule)
    assert torch.allclose(sol.t, torch.full((4,), math.log(2) / lam, dtype=torch.float64),
                          atol=1e-8)
    assert sol.halted.all()
    assert torch.allclose(sol.h[:, 0], torch.full((4,), 0.5 ** (1 / lam), dtype=torch.float64),
                          atol=1e-7)


# ------------------------------------------------------------------------ free boundary
def _curves(n, n_t, c, b=3.0, seed=0):
    """Deterministic 2-class loss curves l_i(t) = a_i e^{-b t} + 0.01 (target class 0)."""
    g = torch.Generator().manual_seed(seed)
    a = 0.05 + 0.55 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 1, n_t, dtype=torch.float64)
    ell = a * torch.exp(-b * t) + 0.01
    z = -torch.log(torch.expm1(ell))        # softplus(-z) = l: logits [z, 0]
    logits = torch.stack([z, torch.zeros_like(z)], dim=-1)
    traj = DepthTrajectory(depths=t, outputs=logits, kind="time")
    return traj, torch.zeros(n, dtype=torch.long), ell


def test_free_boundary_recovers_first_time_loss_plus_cost_stops_decreasing():
    c, n_t = 0.3, 21
    rule = FreeBoundaryRule(RuleFeatures("confidence"), cost=c, basis="poly2")
    train, y_train, _ = _curves(3000, n_t, c, seed=0)
    rule.fit(train, y_train)
    test, y_test, ell = _curves(500, n_t, c, seed=1)
    total = ell + c * test.depths
    nondecr = total[:, 1:] >= total[:, :-1]
    k_star = torch.where(nondecr.any(1), nondecr.float().argmax(1), torch.full((500,), n_t - 1))
    k_rule = rule.stop_index(test)
    idx = torch.arange(500)
    exact = (k_rule == k_star).double().mean()
    assert exact >= 0.9, float(exact)
    assert (k_rule - k_star).abs().max() <= 1
    # misses happen only at near-ties (neighbouring checkpoints within 1e-3 nats): wherever
    # the optimum is clear, the rule finds it exactly
    big = torch.full((500, 1), 1e9, dtype=torch.float64)
    padded = torch.cat([big, total, big], dim=1)
    gap = torch.minimum(padded[idx, k_star], padded[idx, k_star + 2]) - total[idx, k_star]
    assert torch.equal(k_rule[gap > 1e-3], k_star[gap > 1e-3])
    # and the cost of the fitted rule is within 0.01% of the optimum
    assert total[idx, k_rule].mean() <= 1.0001 * total[idx, k_star].mean()


def test_free_boundary_score_agrees_with_solvers_policy_at_checkpoints():
    c = 0.3
    rule = FreeBoundaryRule(RuleFeatures("confidence"), cost=c).fit(*_curves(800, 11, c)[:2])
    test, _, _ = _curves(200, 11, c, seed=5)
    pol = rule.fit_result.policy
    for k in range(10):
        logits = test.outputs[:, k]
        x = rule.features(test.depths[k].expand(200), None, logits)[:, 1:]
        ours = rule.score(test.depths[k].expand(200), None, logits) >= 0
        theirs = pol.should_stop(k, x)
        assert torch.equal(ours, theirs)
        # and the score is the difference of the policy's two regressions
        diff = pol.reward_estimate(k, x) - pol.continuation(k, x)
        assert torch.allclose(rule.score(test.depths[k].expand(200), None, logits).double(),
                              diff, atol=1e-9)


def test_free_boundary_halts_flow_between_checkpoints_by_interpolation():
    # On the flow whose checkpoints it was fitted on, event halting lands in the checkpoint
    # interval (t[k-1], t[k]] that ends at the discrete decision k. The labels are the flow's
    # own final predictions, so going deeper pays and the stopping indices spread out (with
    # random labels every sample stops at t = 0 and the check would be vacuous).
    torch.manual_seed(0)
    model = _small_model(seed=2)
    x = torch.randn(64, 6, dtype=torch.float64)
    te = torch.linspace(0, 1, 11, dtype=torch.float64)
    with torch.no_grad():
        traj = model.flow.trajectory(model.embed(x), model.head, te)
        y = traj.outputs[:, -1].argmax(-1)
        rule = FreeBoundaryRule(RuleFeatures("confidence"), cost=0.1).fit(traj.detach(), y)
        k = rule.stop_index(traj)
        p = model.predict(x, rule)
    assert len(k.unique()) >= 5 and (k > 0).sum() >= 16, torch.bincount(k, minlength=11)
    assert (p.tau <= te[k] + 1e-9).all()
    later = k > 0
    assert (p.tau[later] > te[k[later] - 1]).all()
    assert (p.tau[~later] == 0).all()


# ----------------------------------------------------------------------- event boundary
def test_event_boundary_gradient_matches_finite_differences():
    torch.manual_seed(0)
    d = 3
    A = torch.tensor([[-0.5, 1.0, 0.0], [-1.0, -0.5, 0.3], [0.0, -0.3, -0.2]],
                     dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, t, h):
            return h @ A.T

    block = ODEBlock(Linear(), t1=2.0, method="dopri5", rtol=1e-10, atol=1e-12)
    head = nn.Linear(d, 4).double()
    rule = EventBoundaryRule(RuleFeatures("state", t1=2.0, state_dim=d), hidden=0,
                             init_stop=0.4, drift=3.0).double()
    h0 = torch.randn(5, d, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])

    def objective():
        val, sol = stopped_objective(block, h0, y, rule, head, cost=0.3)
        return val.mean(), sol

    val, sol = objective()
    assert sol.halted.all()  # every sample crossed: gradients exist for all
    params = [rule.net.weight, rule.net.bias, rule.raw_drift]
    grads = torch.autograd.grad(val, params)
    eps = 1e-6
    for p, g in zip(params, grads):
        flat = p.data.view(-1)
        for j in range(flat.numel()):
            old = float(flat[j])
            flat[j] = old + eps
            up = objective()[0].item()
            flat[j] = old - eps
            down = objective()[0].item()
            flat[j] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - float(g.view(-1)[j])) < 1e-5 * (1 + abs(fd)), (p.shape, j, fd,
                                                                           float(g.view(-1)[j]))


# ------------------------------------------------------------- per-sample halting (batch)
def _small_model(seed=0, d=5):
    torch.manual_seed(seed)
    field = MLPField(d, 16, time="hat", n_basis=3).double()
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(2.0)
    block = ODEBlock(field, t1=1.0, method="dopri5", rtol=1e-7, atol=1e-9)
    return ContinuousDepthClassifier(nn.Linear(6, d).double(), block, nn.Linear(d, 3).double())


def _rules():
    torch.manual_seed(7)
    ev = EventBoundaryRule(RuleFeatures("confidence"), hidden=8, init_stop=0.5).double()
    with torch.no_grad():
        ev.net[0].weight.mul_(20.0)  # stopping times that differ between samples
        ev.net[2].weight.normal_(0, 2.0)
    torch.manual_seed(7)  # (drawn after ev, the hazard never reached its median: vacuous)
    hz = HazardRule(RuleFeatures("confidence"), hidden=8).double()
    with torch.no_grad():
        hz.net[0].weight.mul_(20.0)
        hz.net[2].weight.normal_(0, 2.0)
    return {"event": ev, "hazard": hz, "maxprob": MaxProbability(0.5)}


_MODEL = None


@settings(max_examples=6, deadline=None)
@given(rule_name=st.sampled_from(["event", "hazard", "maxprob"]),
       perm_seed=st.integers(0, 1000), size=st.integers(2, 12))
def test_per_sample_halting_in_a_batch_equals_each_sample_alone(rule_name, perm_seed, size):
    global _MODEL
    if _MODEL is None:
        _MODEL = _small_model(seed=2)
    model, rule = _MODEL, _rules()[rule_name]
    g = torch.Generator().manual_seed(perm_seed)
    x = torch.randn(size, 6, dtype=torch.float64, generator=g) * 2
    with torch.no_grad():
        batch = model.predict(x, rule)
        for i in range(size):
            alone = model.predict(x[i:i + 1], rule)
            # The field's matmuls round differently for 1 and for n rows (~1e-17), which can flip
            # a step's accept/reject; so the answers agree to the solver's accuracy, not bitwise.
            assert torch.allclose(alone.tau, batch.tau[i:i + 1], rtol=0, atol=1e-7)
            assert torch.allclose(alone.logits, batch.logits[i:i + 1], rtol=0, atol=1e-6)
            assert torch.equal(alone.logits.argmax(-1), batch.logits[i:i + 1].argmax(-1))
            assert alone.halted.item() == batch.halted[i].item()


def test_halting_times_differ_between_samples_and_save_evaluations():
    model = _small_model(seed=2)
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    with torch.no_grad():
        full = model.predict(x, None)
        for name, rule in _rules().items():  # every rule of the batch-vs-alone test halts
            halted = model.predict(x, rule)
            assert halted.tau.std() > 0.03, name  # per-sample depths, not one shared depth
            assert halted.halted.sum() >= 2 and (halted.tau[halted.halted] > 0).any(), name
            if name != "hazard":  # the hazard's extra channel steers the step sizes too
                assert (halted.nfe <= full.nfe).all(), name
            assert halted.nfe.sum() < full.nfe.sum(), name


# ------------------------------------------------------ finite stopping on long horizons
def _relaxing_curves(n, T, dt=0.05, a=2.0, seed=0):
    """z' = a (z_inf - z): diminishing returns; l = softplus(-z) for the target class."""
    g = torch.Generator().manual_seed(seed)
    z0 = -1.0 + 2.0 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    zinf = 1.0 + 4.0 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    t = torch.arange(0, T + dt / 2, dt, dtype=torch.float64)
    z = zinf - (zinf - z0) * torch.exp(-a * t)
    logits = torch.stack([z, torch.zeros_like(z)], dim=-1)
    return DepthTrajectory(depths=t, outputs=logits, kind="time"), torch.zeros(n, dtype=torch.long)


def test_stopping_time_distribution_is_unchanged_when_horizon_grows_tenfold():
    # Qi (2025): with diminishing returns the optimal stopping depth is finite even on an
    # infinite horizon. Fit on T and on 10 T: the quantiles of tau agree.
    c = 0.05
    taus = {}
    for T in (2.0, 20.0):
        train, y = _relaxing_curves(1500, T, seed=0)
        rule = FreeBoundaryRule(RuleFeatures("confidence", t1=T), cost=c, basis="poly2")
        rule.fit(train, y)
        test, _ = _relaxing_curves(400, T, seed=1)
        taus[T] = test.depths[rule.stop_index(test)]
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    q_short, q_long = torch.quantile(taus[2.0], q), torch.quantile(taus[20.0], q)
    assert (q_short - q_long).abs().max() <= 0.1 + 1e-9, (q_short, q_long)
    assert taus[20.0].max() < 2.0  # nobody goes beyond the short horizon
    # the depth regulariser of such a flow converges: int_0^T e^{kappa t} ||f||^2 with f
    # decaying like e^{-a t}, kappa < 2a, changes by less than 1e-6 from T = 10 to T = 100
    block = ODEBlock(Decay(2.0), t1=10.0, **TIGHT).double()
    obj = FlowObjective(nn.Identity(), depth_reg=1.0, kappa=1.0, depth_kind="exp", t1=1.0)
    h0 = torch.ones(1, 1, dtype=torch.float64)
    y0 = torch.zeros(1, dtype=torch.long)
    r10 = flow_objective(block, h0, y0, obj, t1=10.0).depth_reg
    r100 = flow_objective(block, h0, y0, obj, t1=100.0).depth_reg
    assert abs(float(r100 - r10)) < 1e-6
    assert abs(float(r100) - 4.0 / 3.0) < 1e-6  # a^2 / (2a - kappa) = 4 / 3


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    feats = RuleFeatures("confidence")
    with pytest.raises(ValueError, match="cost"):
        FreeBoundaryRule(feats, cost=-0.1)
    with pytest.raises(ValueError, match="cost"):
        FlowObjective(nn.Identity(), rule=HazardRule(feats), cost=-1.0)
    with pytest.raises(ValueError, match="horizon"):
        ODEBlock(Decay(), t1=0.0)
    with pytest.raises(ValueError, match="t1"):
        ODEBlock(Decay(), t1=1.0).solve(torch.ones(2, 1), t1=0.0)
    with pytest.raises(ValueError, match="survival"):
        HazardRule(feats, survival=1.5)
    with pytest.raises(TypeError, match="RuleFeatures"):
        HazardRule("confidence")
    with pytest.raises(ValueError, match="logits"):  # wrong shapes: logits (batch,) not 2-D
        feats(torch.zeros(3), None, torch.zeros(3))
    with pytest.raises(ValueError, match="depth"):
        feats(torch.zeros(4), None, torch.zeros(3, 5))
    with pytest.raises(TypeError, match="DepthTrajectory"):
        HazardRule(feats).stop_index(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="fit"):
        FreeBoundaryRule(feats, cost=0.1).score(torch.zeros(2), None, torch.zeros(2, 3))
    traj, y, _ = _curves(10, 5, 0.1)
    with pytest.raises(ValueError, match="target"):
        FreeBoundaryRule(feats, cost=0.1).fit(traj, y[:5])
    with pytest.raises(ValueError, match="halting probabilities"):
        expected_stopped_loss(traj, y, torch.full((10, 4), 0.25), 0.1)
    with pytest.raises(ValueError, match="cost_per_depth"):
        expected_stopped_loss(traj, y, torch.full((10, 5), 0.2), -0.1)
    with pytest.raises(ValueError, match="history"):
        from odedepth.stopping import Patience
        ODEBlock(Decay(), t1=1.0).solve(torch.ones(2, 1), stop=Patience(2))
    with pytest.raises(ValueError, match="init_stop"):
        EventBoundaryRule(feats, init_stop=0.0)


def test_fitted_free_boundary_rule_reloads_into_a_fresh_instance(tmp_path):
    """A fresh FreeBoundaryRule loaded from a fitted one's state_dict (directly, through
    odedepth.checkpoint and a file, and nested in a module) scores and halts identically."""
    from odedepth import checkpoint as ck

    torch.manual_seed(0)
    make = lambda: FreeBoundaryRule(RuleFeatures("confidence"), cost=0.1)  # noqa: E731
    fitted = make().fit(DepthTrajectory(depths=torch.linspace(0, 1, 5),
                                        outputs=torch.randn(60, 5, 3) * 2), torch.randint(0, 3, (60,)))
    ck.save(fitted.state_dict(), tmp_path / "fb.pt")
    by_torch, by_ck, by_file = make(), make(), make()
    by_torch.load_state_dict(fitted.state_dict())
    ck.load_state_dict(by_ck, fitted.state_dict())
    ck.load_state_dict(by_file, tmp_path / "fb.pt")
    outer, outer2 = nn.ModuleDict({"rule": fitted}), nn.ModuleDict({"rule": make()})
    ck.load_state_dict(outer2, outer.state_dict())
    loaded = [by_torch, by_ck, by_file, outer2["rule"]]

    t = torch.rand(40)
    logits = torch.randn(40, 3) * 2
    ref = fitted.score(t, None, logits)
    block, head = ODEBlock(MLPField(3, 8), rtol=1e-6, atol=1e-8), nn.Linear(3, 3)
    h0 = torch.randn(16, 3) * 2
    with torch.no_grad():
        sol_ref = block.solve(h0, stop=fitted, head=head)
        for r in loaded:
            for k in ("grid", "coef", "shift", "scale"):
                assert torch.equal(getattr(r, k), getattr(fitted, k))
            assert torch.equal(r.score(t, None, logits), ref)
            sol = block.solve(h0, stop=r, head=head)
            assert torch.equal(sol.t, sol_ref.t) and torch.equal(sol.halted, sol_ref.halted)

    # half a fit is refused, naming what is missing; an unfitted state loads into an unfitted rule
    partial = {k: v for k, v in fitted.state_dict().items() if k != "coef"}
    with pytest.raises(RuntimeError, match=r"missing \['coef'\]"):
        make().load_state_dict(partial)
    with pytest.raises(ck.CheckpointError, match="missing keys.*coef"):
        ck.load_state_dict(make(), partial)
    make().load_state_dict(make().state_dict())
    ck.load_state_dict(make(), make().state_dict())
