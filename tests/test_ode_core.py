"""Core of solvers.ode against closed forms and scipy: methods, horizons, directions, t_eval,
dense output, per-sample control, compaction, args=, gradients."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from solvers import ode

ADAPTIVE = ["bosh3", "dopri5", "tsit5", "dopri8"]
FIXED = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def oscillator(t, y):
    return torch.stack([y[:, 1], -y[:, 0]], dim=1)


def oscillator_exact(t, y0):
    """y'' = -y: rotation of (y, y') by angle t (t of shape (batch,) or (batch, n))."""
    c, s = torch.cos(t), torch.sin(t)
    if t.dim() == 2:
        y0 = y0[:, None, :]
    return torch.stack([c * y0[..., 0] + s * y0[..., 1], -s * y0[..., 0] + c * y0[..., 1]], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_closed_forms(method, dtype):
    # Exponential decay with per-sample rates, and the harmonic oscillator.
    rtol, atol = (1e-5, 1e-7) if dtype == torch.float32 else (1e-9, 1e-11)
    if method == "bosh3":  # third order: keep the step count (test time) moderate
        rtol, atol = max(rtol, 1e-7), max(atol, 1e-9)
    k = torch.tensor([0.5, 1.0, 2.0], dtype=dtype)
    y0 = torch.tensor([[1.0], [2.0], [-1.0]], dtype=dtype)
    sol = ode.solve(lambda t, y: -k[:, None] * y, y0, (0.0, 2.0), method=method, rtol=rtol,
                    atol=atol, compact=False)
    exact = y0 * torch.exp(-2.0 * k)[:, None]
    tol = 2e-4 if dtype == torch.float32 else (1e-5 if method == "bosh3" else 1e-7)
    torch.testing.assert_close(sol.y, exact, rtol=tol, atol=tol)
    assert sol.status.tolist() == [0, 0, 0]
    assert sol.y.dtype == dtype

    y0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=dtype)
    sol = ode.solve(oscillator, y0, (0.0, 10.0), method=method, rtol=rtol, atol=atol)
    exact = oscillator_exact(torch.full((2,), 10.0, dtype=dtype), y0)
    tol = 1e-3 if dtype == torch.float32 else (1e-4 if method == "bosh3" else 1e-6)
    torch.testing.assert_close(sol.y, exact, rtol=tol, atol=tol)
    torch.testing.assert_close(sol.t, torch.full((2,), 10.0, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", sorted(FIXED))
def test_fixed_step_methods_global_error_order(method, dtype):
    # Global error of order p: e(dt) ~ C dt^p against the closed form of y' = -y on [0, 1].
    y0 = torch.ones(1, 1, dtype=dtype)
    errs = []
    for dt in (0.1, 0.05):
        sol = ode.solve(lambda t, y: -y, y0, (0.0, 1.0), method=method, dt=dt)
        assert sol.stats["n_steps"].item() == round(1.0 / dt)
        errs.append(abs(sol.y.item() - math.exp(-1.0)))
    p = FIXED[method]
    if dtype == torch.float64 or p < 4:
        assert math.log2(errs[0] / errs[1]) == pytest.approx(p, abs=0.2)
    else:  # rk4 in float32 is at round-off already
        assert errs[1] < 1e-6


def test_dopri5_reproduces_scipy_rk45_step_sequence():
    # Same tableau, error norm, I controller (0.9, [0.2, 10]) and Hairer initial step as
    # scipy's RK45: the f-evaluation counts and the final error must agree.
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    for rtol in (1e-3, 1e-6, 1e-9):
        sol = ode.solve(oscillator, y0, (0.0, 10.0), rtol=rtol, atol=rtol * 1e-3)
        ref = solve_ivp(lambda t, y: [y[1], -y[0]], (0.0, 10.0), [1.0, 0.0], rtol=rtol,
                        atol=rtol * 1e-3)
        assert sol.stats["nfe"].item() == ref.nfev
        assert sol.y[0, 0].item() == pytest.approx(ref.y[0, -1], abs=1e-3 * rtol)


def test_per_component_atol_matches_scipy():
    # atol per component (a (state,) tensor), as scipy's atol array.
    atol = torch.tensor([1e-10, 1e-3], dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    sol = ode.solve(oscillator, y0, (0.0, 5.0), rtol=1e-6, atol=atol)
    ref = solve_ivp(lambda t, y: [y[1], -y[0]], (0.0, 5.0), [1.0, 0.0], rtol=1e-6,
                    atol=atol.numpy())
    assert sol.stats["nfe"].item() == ref.nfev


def test_per_sample_horizons_and_mixed_directions():
    t1 = torch.tensor([1.0, -1.0, 3.0, -0.5, 0.0], dtype=torch.float64)
    t0 = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0], dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [1.0, 2.0]],
                      dtype=torch.float64)
    sol = ode.solve(oscillator, y0, (t0, t1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sol.t, t1)
    torch.testing.assert_close(sol.y, oscillator_exact(t1 - t0, y0), rtol=1e-8, atol=1e-8)
    assert sol.status.tolist() == [0] * 5
    assert sol.stats["n_steps"][4].item() == 0  # zero-length span: no step


def test_each_sample_takes_its_own_steps():
    # Rates 1 and 100: per-sample control gives the slow sample far fewer steps, and the
    # fast one the same steps as when solved alone (f is elementwise).
    k = torch.tensor([[1.0], [100.0]], dtype=torch.float64)
    y0 = torch.ones(2, 1, dtype=torch.float64)
    sol = ode.solve(lambda t, y, a: -a * y, y0, (0.0, 1.0), args=k)
    alone = ode.solve(lambda t, y: -100.0 * y, y0[1:], (0.0, 1.0))
    assert sol.stats["n_steps"][0] < sol.stats["n_steps"][1] / 3
    assert sol.stats["n_steps"][1] == alone.stats["n_steps"][0]
    assert torch.equal(sol.y[1:], alone.y)
    torch.testing.assert_close(sol.y[:, 0], torch.exp(-k[:, 0]), rtol=1e-5, atol=1e-7)


def test_compaction_shrinks_the_batch_seen_by_f():
    sizes = []
    t1 = torch.tensor([0.1, 1.0, 5.0, 20.0], dtype=torch.float64)

    def f(t, y):
        sizes.append(y.shape[0])
        assert t.shape == (y.shape[0],)
        return oscillator(t, y)

    y0 = torch.tensor([[1.0, 0.0]] * 4, dtype=torch.float64)
    sol = ode.solve(f, y0, (0.0, t1), rtol=1e-8, atol=1e-10)
    assert sorted(set(sizes), reverse=True) == [4, 3, 2, 1]
    # f rows evaluated = the samples' own needs (sum of per-sample nfe), not batch x slowest.
    assert sum(sizes) == int(sol.stats["nfe"].sum())
    torch.testing.assert_close(sol.y, oscillator_exact(t1, y0), rtol=1e-6, atol=1e-6)
    masked = ode.solve(oscillator, y0, (0.0, t1), rtol=1e-8, atol=1e-10, compact=False)
    assert torch.equal(masked.y, sol.y) and torch.equal(masked.status, sol.status)
    assert torch.equal(masked.stats["n_steps"], sol.stats["n_steps"])


def test_args_are_gathered_to_active_samples():
    # Per-sample rates passed as args: f sees the rates of exactly the active samples.
    k = torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    t1 = torch.tensor([0.2, 2.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(3, 1, dtype=torch.float64)
    sol = ode.solve(lambda t, y, a: -a[0][:, None] * y + a[1][:, None], y0, (0.0, t1),
                    args=(k, c), rtol=1e-10, atol=1e-12)
    # y' = -k y + c: y = c/k + (y0 - c/k) e^{-k t}
    exact = c / k + (1.0 - c / k) * torch.exp(-k * t1)
    torch.testing.assert_close(sol.y[:, 0], exact, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_t_eval_shared_and_per_sample(method):
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    kw = {"dt": 0.01} if method == "rk4" else {"rtol": 1e-9, "atol": 1e-11}
    te = torch.linspace(0.0, 3.0, 13, dtype=torch.float64)
    sol = ode.solve(oscillator, y0, (0.0, 3.0), t_eval=te, method=method, **kw)
    assert sol.ys.shape == (2, 13, 2)
    torch.testing.assert_close(sol.ys, oscillator_exact(te.expand(2, -1), y0), rtol=1e-7,
                               atol=1e-7)
    # Per-sample grids, second sample backwards in time.
    t1 = torch.tensor([2.0, -1.5], dtype=torch.float64)
    te2 = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)[None] * t1[:, None]
    sol = ode.solve(oscillator, y0, (0.0, t1), t_eval=te2, method=method, **kw)
    torch.testing.assert_close(sol.ts, te2)
    torch.testing.assert_close(sol.ys, oscillator_exact(te2, y0), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("method,tol", [("dopri5", 1e-7), ("tsit5", 1e-7), ("dopri8", 1e-7),
                                        ("bosh3", 1e-5)])
def test_dense_output_between_steps(method, tol):
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    t1 = torch.tensor([6.0, -4.0], dtype=torch.float64)
    rtol = 1e-7 if method == "bosh3" else 1e-9
    sol = ode.solve(oscillator, y0, (0.0, t1), method=method, rtol=rtol, atol=rtol * 1e-2,
                    dense_output=True)
    tq = torch.rand(2, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tq = tq * t1[:, None]
    torch.testing.assert_close(sol.interpolate(tq), oscillator_exact(tq, y0), rtol=tol,
                               atol=tol)
    torch.testing.assert_close(sol.interpolate(t1), oscillator_exact(t1, y0), rtol=tol, atol=tol)
    # scalar t inside both spans? only t=0 is common; outside a span gives NaN
    out = sol.interpolate(5.0)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()


def test_dense_output_is_the_dopri5_quartic():
    # One dopri5 step of y' = 1 + ... polynomial of degree 4 in t is reproduced exactly
    # (order-4 continuous extension): y' = 4 t^3, y = t^4.
    sol = ode.solve(lambda t, y: 4 * t[:, None] ** 3, torch.zeros(1, 1, dtype=torch.float64),
                    (0.0, 1.0), first_step=1.0, rtol=1e-3, atol=1e-3, dense_output=True)
    assert sol.stats["n_steps"].item() == 1
    tq = torch.linspace(0, 1, 11, dtype=torch.float64)[None]
    torch.testing.assert_close(sol.interpolate(tq)[0, :, 0], tq[0] ** 4, rtol=1e-12, atol=1e-12)


def test_pi_controller_and_step_bounds():
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    sol = ode.solve(oscillator, y0, (0.0, 10.0), controller="pi", rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(sol.y, oscillator_exact(torch.tensor([10.0], dtype=torch.float64),
                                                       y0), rtol=1e-6, atol=1e-6)
    sol = ode.solve(oscillator, y0, (0.0, 1.0), dt_max=0.01)
    assert sol.stats["n_accepted"].item() >= 100
    sol = ode.solve(oscillator, y0, (0.0, 1.0), controller=ode.PIController(alpha=0.6),
                    first_step=1e-4)
    assert sol.status.item() == 0


def test_custom_tableau_in_a_few_lines():
    ralston = ode.ExplicitRK(ode.ButcherTableau(c=(0.0, 2 / 3), a=((), (2 / 3,)),
                                                b=(0.25, 0.75), order=2, name="ralston"))
    sol = ode.solve(lambda t, y: -y, torch.ones(1, 1, dtype=torch.float64), (0.0, 1.0),
                    method=ralston, dt=1e-3)
    assert sol.y.item() == pytest.approx(math.exp(-1), abs=1e-6)
    with pytest.raises(ValueError, match="sum to c"):
        ode.ButcherTableau(c=(0.0, 0.5), a=((), (0.4,)), b=(0.5, 0.5), order=2)


def test_backprop_gradients_closed_form():
    # y(T) = y0 exp(-k T): dy/dy0 = exp(-kT), dy/dk = -T y0 exp(-kT).
    k = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sol = ode.solve(lambda t, y: -k * y, y0, (0.0, t1), rtol=1e-10, atol=1e-12)
    gy0, gk = torch.autograd.grad(sol.y.sum(), (y0, k))
    kd = k.detach()
    torch.testing.assert_close(gy0[:, 0], torch.exp(-kd * t1), rtol=1e-7, atol=1e-9)
    expect = (-t1 * y0.detach()[:, 0] * torch.exp(-kd * t1)).sum()
    torch.testing.assert_close(gk, expect, rtol=1e-7, atol=1e-9)


def test_gradcheck_dopri5_tiny_problem():
    torch.manual_seed(0)
    W = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    y0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def run(y0, W):
        # First step fixed so that the step sequence does not move under perturbation.
        sol = ode.solve(lambda t, y: torch.tanh(y @ W.T), y0, (0.0, 0.5), rtol=1e-3,
                        atol=1e-6, first_step=0.1, t_eval=torch.tensor([0.25, 0.5],
                                                                      dtype=torch.float64))
        return sol.y, sol.ys

    assert torch.autograd.gradcheck(run, (y0, W))


def _duffing_batch(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 2, generator=g, dtype=torch.float64) * 4 - 2
    return x.to(dtype)


def _duffing(t, y):
    return torch.stack([y[:, 1], -y[:, 0] - 0.5 * y[:, 0] ** 3 - 0.1 * y[:, 1]], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method, controller", [("dopri5", "i"), ("tsit5", "pi"),
                                                ("bosh3", "i"), ("dopri8", "i")])
@pytest.mark.parametrize("output", ["t_eval", "event", "event+t_eval", "dense"])
def test_no_grad_and_grad_paths_take_the_same_steps_and_bits(dtype, method, controller, output):
    # The no-grad fast path (a preallocated buffer of h-scaled stages) and the autograd path
    # (out of place) do the same arithmetic: identical steps, states, outputs, event times
    # and dense output, in float32 too (they differed by rounding, which flipped float32
    # accept decisions: 14 of 200 Duffing samples took another number of steps).
    y0 = _duffing_batch(dtype)
    t1 = torch.linspace(3.0, 6.0, 40, dtype=dtype)  # per-sample horizons: compaction
    kw = dict(method=method, controller=controller, rtol=1e-4, atol=1e-6)
    if "t_eval" in output:
        kw["t_eval"] = torch.linspace(0.0, 3.0, 7, dtype=dtype)
    if "event" in output:  # x crosses 0.3 downwards (terminal): deferred or immediate roots
        kw["event"] = ode.Event(lambda t, y: y[:, 0] - 0.3, direction=-1, terminal=True)
    if output == "dense":
        kw["dense_output"] = True
    with torch.no_grad():
        a = ode.solve(_duffing, y0, (0.0, t1), throw=False, **kw)
    b = ode.solve(_duffing, y0.clone().requires_grad_(), (0.0, t1), throw=False, **kw)
    for key in ("n_steps", "n_rejected"):
        assert torch.equal(a.stats[key], b.stats[key]), key
    # (with a graph, an event sample's time gradient takes one more f call, counted in nfe)
    extra = b.stats["event_mask"].long() if "event" in output else 0
    assert torch.equal(a.stats["nfe"] + extra, b.stats["nfe"])
    assert torch.equal(a.status, b.status) and torch.equal(a.t, b.t.detach())
    assert torch.equal(a.y, b.y.detach())
    if "t_eval" in output:
        assert torch.equal(a.ys.nan_to_num(7.0), b.ys.detach().nan_to_num(7.0))
    if "event" in output:
        assert torch.equal(a.t_event.nan_to_num(7.0), b.t_event.detach().nan_to_num(7.0))
    if output == "dense":
        tq = torch.linspace(0.0, 3.0, 13, dtype=dtype).expand(40, -1)
        assert torch.equal(a.interpolate(tq).nan_to_num(7.0),
                           b.interpolate(tq).detach().nan_to_num(7.0))


def test_inference_mode_matches_no_grad_and_closed_form():
    # Under torch.inference_mode (cheaper ops) the solver runs the same fast path: same steps,
    # same values, and the oscillator's closed form (cos t, -sin t).
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        a = ode.solve(oscillator, y0, (0.0, 3.0), rtol=1e-9, atol=1e-12)
    with torch.inference_mode():
        b = ode.solve(oscillator, y0, (0.0, 3.0), rtol=1e-9, atol=1e-12)
    assert torch.equal(a.stats["n_steps"], b.stats["n_steps"]) and torch.equal(a.y, b.y)
    exact = torch.tensor([[math.cos(3.0), -math.sin(3.0)], [math.sin(3.0), math.cos(3.0)]],
                         dtype=torch.float64)
    torch.testing.assert_close(b.y, exact, rtol=0, atol=1e-8)


def test_nfe_counts_f_rows():
    calls = []

    def f(t, y):
        calls.append(y.shape[0])
        return -y

    for method, kw in [("dopri5", {}), ("dopri8", {}), ("rk4", {"dt": 0.1})]:
        calls.clear()
        sol = ode.solve(f, torch.ones(3, 1, dtype=torch.float64), (0.0, 1.0), method=method,
                        compact=False, **kw)
        assert int(sol.stats["nfe"][0]) == len(calls)
        assert np.all(sol.stats["n_rejected"].numpy() == sol.stats["n_steps"].numpy()
                      - sol.stats["n_accepted"].numpy())


@pytest.mark.parametrize("terminal, t_eval", [(True, None), (True, [0.5, 1.0]),
                                               (False, None)])
@pytest.mark.parametrize("grad", [False, True])
def test_nfe_counts_the_rows_f_saw_with_events(terminal, t_eval, grad):
    # With an event whose threshold requires grad, the event-time gradient takes one more f
    # call per event sample (implicit function theorem); nfe counts it (it did not). Rows are
    # counted per sample through `args` (sample ids), deferred and immediate roots alike.
    rows = torch.zeros(4, dtype=torch.long)

    def f(t, y, ids):
        rows.index_add_(0, ids, torch.ones_like(ids))
        return torch.stack([y[:, 1], -y[:, 0]], 1)

    thr = torch.tensor(0.2, dtype=torch.float64, requires_grad=grad)
    ev = ode.Event(lambda t, y, ids: y[:, 0] - thr, direction=-1, terminal=terminal)
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.1, 0.0], [2.0, 0.0]], dtype=torch.float64)
    sol = ode.solve(f, y0, (0.0, 3.0), event=ev, args=torch.arange(4), t_eval=t_eval)
    assert sol.stats["event_mask"].tolist() == [True, True, False, True]
    assert torch.equal(sol.stats["nfe"], rows)


@pytest.mark.parametrize("grad", [False, True])
def test_sample_alone_is_bit_identical_to_sample_in_batch(grad):
    # With an f built from +, * only (no BLAS, no SIMD transcendental), a sample's steps,
    # outputs and event time are bit-identical alone and inside a batch of 33: the solver's
    # own arithmetic has no batch-size-dependent rounding (step-size pow is lane-padded).
    torch.manual_seed(0)
    f = lambda t, y: y[:, [1, 2, 3, 4, 0]] * 0.7 - y * y * 0.1 + t[:, None] * 0.5  # noqa: E731
    y0 = torch.randn(33, 5, dtype=torch.float64, requires_grad=grad)
    te = torch.linspace(0, 2, 9, dtype=torch.float64)
    ev = ode.Event(lambda t, y: y[:, 0] - 0.3)
    with torch.set_grad_enabled(grad):
        a = ode.solve(f, y0, (0.0, 2.0), t_eval=te, event=ev, throw=False)
        for i in (0, 13, 31, 32):
            b = ode.solve(f, y0[i:i + 1], (0.0, 2.0), t_eval=te, event=ev, throw=False)
            assert torch.equal(a.t[i:i + 1], b.t) and torch.equal(a.y[i:i + 1], b.y)
            assert torch.equal(a.ys[i:i + 1].nan_to_num(), b.ys.nan_to_num())
            assert torch.equal(a.stats["n_steps"][i:i + 1], b.stats["n_steps"])


def test_gradient_with_respect_to_the_horizon():
    # y(T) = y0 exp(-k T): dy/dT = -k y0 exp(-k T) (= f at the end), per sample and shared.
    k = 0.7
    y0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    t1 = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    sol = ode.solve(lambda t, y: -k * y, y0, (0.0, t1), rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(sol.y.sum(), t1)
    torch.testing.assert_close(g, -k * y0[:, 0] * torch.exp(-k * t1.detach()))
    T = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    sol = ode.solve(lambda t, y: -k * y, y0, (0.0, T), rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(sol.y.sum(), T)
    assert g.item() == pytest.approx(-k * 6.0 * math.exp(-k * 1.5), rel=1e-8)


def test_torchdiffeq_back_end_routing():
    # method="torchdiffeq:<name>" runs the peer on the same problem (compat back end).
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    sol = ode.solve(oscillator, y0, (0.0, 3.0), method="torchdiffeq:dopri5", rtol=1e-10,
                    atol=1e-12)
    exact = oscillator_exact(torch.full((2,), 3.0, dtype=torch.float64), y0)
    torch.testing.assert_close(sol.y, exact, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="event"):
        ode.solve(oscillator, y0, (0.0, 3.0), method="torchdiffeq:dopri5",
                  event=lambda t, y: y[:, 0])
