"""Per-sample events of solvers.ode against closed forms, finite differences and torchdiffeq:
event times, stopped states and implicit-function-theorem gradients."""

import importlib
import math

import pytest
import torch
import torchdiffeq
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import ode

D = torch.float64
G = 8.0


def ball(t, y):
    # state (height, velocity); constant gravity g = 8
    return torch.stack([y[:, 1], torch.full_like(y[:, 0], -G)], dim=1)


def ground(t, y):
    return y[:, 0]


def test_bouncing_ball_closed_form_batch():
    # x0 = 10, g = 8: t* = sqrt(2 x0 / g) = 1.58114, v = -12.649, dt*/dx0 = 1/(g t*) = 0.079057.
    x0 = torch.tensor([10.0, 5.0, 1e4], dtype=D)
    y0 = torch.stack([x0, torch.zeros_like(x0)], 1).requires_grad_()
    sol = ode.solve(ball, y0, (0.0, 10.0), event=ode.Event(ground, direction=-1), rtol=1e-10,
                    atol=1e-12)
    tstar = torch.sqrt(2 * x0 / G)
    assert sol.status.tolist() == [1, 1, 0]  # the third never lands before t = 10
    assert sol.stats["event_mask"].tolist() == [True, True, False]
    torch.testing.assert_close(sol.t[:2], tstar[:2], rtol=1e-10, atol=1e-10)
    assert sol.t[0].item() == pytest.approx(1.58114, abs=1e-5)
    assert sol.y[0, 1].item() == pytest.approx(-12.649, abs=1e-3)
    torch.testing.assert_close(sol.y[:2, 0], torch.zeros(2, dtype=D), rtol=0, atol=1e-9)
    torch.testing.assert_close(sol.t[2], torch.tensor(10.0, dtype=D))
    torch.testing.assert_close(sol.t_event[:2], tstar[:2])
    assert math.isnan(sol.t_event[2].item())
    (g,) = torch.autograd.grad(sol.t[:2].sum(), y0)
    torch.testing.assert_close(g[:2, 0], 1.0 / (G * tstar[:2]), rtol=1e-8, atol=1e-10)
    assert g[0, 0].item() == pytest.approx(0.079057, abs=1e-6)
    # dt*/dv0 at v0 = 0: t* = (v0 + sqrt(v0^2 + 2 g x0)) / g -> 1/g
    torch.testing.assert_close(g[:2, 1], torch.full((2,), 1.0 / G, dtype=D))
    assert g[2].abs().max() == 0  # the sample that did not land has no event-time gradient


def test_bouncing_ball_stopped_state_gradient_finite_differences():
    # d v(t*) / d x0 = -g dt*/dx0 comes entirely from the f * dt*/dx0 correction term.
    def stopped(x0):
        y0 = torch.stack([x0, torch.zeros_like(x0)], 1)
        sol = ode.solve(ball, y0, (0.0, 10.0), event=ode.Event(ground, direction=-1),
                        rtol=1e-11, atol=1e-13)
        return sol.t, sol.y[:, 1]

    x0 = torch.tensor([10.0], dtype=D, requires_grad=True)
    t, v = stopped(x0)
    gt, = torch.autograd.grad(t.sum(), x0, retain_graph=True)
    gv, = torch.autograd.grad(v.sum(), x0)
    eps = 1e-5
    tp, vp = stopped(x0.detach() + eps)
    tm, vm = stopped(x0.detach() - eps)
    assert gt.item() == pytest.approx(((tp - tm) / (2 * eps)).item(), rel=1e-6)
    assert gv.item() == pytest.approx(((vp - vm) / (2 * eps)).item(), rel=1e-6)
    assert gv.item() == pytest.approx(-G / (G * math.sqrt(2 * 10.0 / G)), rel=1e-8)


def test_linear_decay_threshold_gradients_wrt_y0_k_and_event_parameter():
    # y' = -k y, event y = c where c is a parameter of the event function only:
    # t* = ln(y0/c)/k; dt*/dy0 = 1/(k y0), dt*/dk = -t*/k, dt*/dc = -1/(k c).
    k = torch.tensor(0.7, dtype=D, requires_grad=True)
    c = torch.tensor(0.3, dtype=D, requires_grad=True)
    y0 = torch.tensor([[1.0], [2.0], [0.2]], dtype=D, requires_grad=True)
    ev = ode.Event(lambda t, y: c - y[:, 0])
    sol = ode.solve(lambda t, y: -k * y, y0, (0.0, 10.0), event=ev, rtol=1e-10, atol=1e-12,
                    throw=False)
    assert sol.status.tolist() == [1, 1, 0]  # y0 = 0.2 starts below c and never crosses
    tstar = torch.log(y0.detach()[:2, 0] / c.detach()) / k.detach()
    torch.testing.assert_close(sol.t[:2], tstar, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sol.y[:2, 0], c.detach().expand(2), rtol=1e-10, atol=1e-10)
    gy0, gk, gc = torch.autograd.grad(sol.t[:2].sum(), (y0, k, c), retain_graph=True)
    kd, cd = k.detach(), c.detach()
    torch.testing.assert_close(gy0[:2, 0], 1.0 / (kd * y0.detach()[:2, 0]))
    torch.testing.assert_close(gk, (-tstar / kd).sum())
    torch.testing.assert_close(gc, (-1.0 / (kd * cd)).expand(2).sum())
    # the stopped state y(t*) = c for every parameter: its gradient is dc only
    gy0, gk, gc = torch.autograd.grad(sol.y[:2].sum(), (y0, k, c), allow_unused=True)
    torch.testing.assert_close(gy0[:2], torch.zeros(2, 1, dtype=D), rtol=0, atol=1e-9)
    assert abs(gk.item()) < 1e-9 and gc.item() == pytest.approx(2.0, abs=1e-9)


def test_gradcheck_event_time():
    def run(y0, k, c):
        sol = ode.solve(lambda t, y: -k * y, y0, (0.0, 10.0),
                        event=ode.Event(lambda t, y: c - y[:, 0]), rtol=1e-6, atol=1e-8,
                        first_step=0.05)
        return sol.t, sol.y

    inputs = (torch.tensor([[1.0], [1.5]], dtype=D, requires_grad=True),
              torch.tensor(0.9, dtype=D, requires_grad=True),
              torch.tensor(0.4, dtype=D, requires_grad=True))
    assert torch.autograd.gradcheck(run, inputs)


def test_learned_boundary_parameters_against_finite_differences():
    # fn depends on parameters that are not part of the state (a learned stopping boundary).
    torch.manual_seed(0)
    head = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.5]]))
        head.bias.fill_(-0.8)
    A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=D)
    y0 = torch.tensor([[0.2, 0.0], [0.1, 0.1], [0.0, 0.3]], dtype=D)

    def run():
        ev = ode.Event(lambda t, y: head(y)[:, 0] + 0.5 * t, direction=1)
        return ode.solve(lambda t, y: y @ A.T, y0, (0.0, 5.0), event=ev, rtol=1e-11,
                         atol=1e-13)

    sol = run()
    assert (sol.status == 1).all()
    grads = torch.autograd.grad(sol.t.sum(), (head.weight, head.bias))
    eps = 1e-6
    for p, gp in zip((head.weight, head.bias), grads):
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            tp = run().t.sum().item()
            flat[i] = old - eps
            tm = run().t.sum().item()
            flat[i] = old
            assert gp.view(-1)[i].item() == pytest.approx((tp - tm) / (2 * eps), rel=1e-5)


def test_matches_torchdiffeq_odeint_event():
    # torchdiffeq's odeint_event (one sample at a time) as a peer: event time and gradient.
    x0 = torch.tensor([3.0, 0.5], dtype=D, requires_grad=True)

    def tfunc(t, y):
        return torch.stack([y[1], -G * torch.ones_like(y[0])])

    t_ev, _ = torchdiffeq.odeint_event(tfunc, x0, torch.tensor(0.0, dtype=D),
                                       event_fn=lambda t, y: y[0], rtol=1e-10, atol=1e-12)
    g_ref, = torch.autograd.grad(t_ev, x0)
    y0 = x0.detach()[None].clone().requires_grad_()
    sol = ode.solve(ball, y0, (0.0, 10.0), event=ode.Event(ground), rtol=1e-10, atol=1e-12)
    g, = torch.autograd.grad(sol.t.sum(), y0)
    assert sol.t.item() == pytest.approx(t_ev.item(), abs=1e-8)
    torch.testing.assert_close(g[0], g_ref, rtol=1e-6, atol=1e-8)


def test_direction_and_zero_at_start():
    y0 = torch.tensor([[1.0], [0.5]], dtype=D)
    f = lambda t, y: -y  # noqa: E731
    # y - 0.5 decreases through zero for sample 0; sample 1 starts exactly at zero.
    up = ode.solve(f, y0, (0.0, 3.0), event=ode.Event(lambda t, y: y[:, 0] - 0.5, direction=1))
    assert up.status.tolist() == [0, 0]
    down = ode.solve(f, y0, (0.0, 3.0), event=ode.Event(lambda t, y: y[:, 0] - 0.5,
                                                        direction=-1))
    assert down.status.tolist() == [1, 0]  # zero at t0 does not fire
    assert down.t[0].item() == pytest.approx(math.log(2.0), abs=1e-6)
    either = ode.solve(f, y0, (0.0, 3.0), event=lambda t, y: y[:, 0] - 0.5)  # bare callable
    assert either.status.tolist() == [1, 0]


def test_non_terminal_event_records_first_crossing_and_continues():
    # Oscillator y = cos t crosses zero at pi/2, 3pi/2, ...; record the first, keep going.
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    f = lambda t, y: torch.stack([y[:, 1], -y[:, 0]], 1)  # noqa: E731
    ev = ode.Event(lambda t, y: y[:, 0], terminal=False)
    sol = ode.solve(f, y0, (0.0, 7.0), event=ev, rtol=1e-10, atol=1e-12)
    assert sol.status.tolist() == [0, 0]
    torch.testing.assert_close(sol.t_event, torch.tensor([math.pi / 2, math.pi], dtype=D))
    torch.testing.assert_close(sol.y[:, 0], torch.tensor([math.cos(7.0), math.sin(7.0)],
                                                         dtype=D))


def test_event_with_t_eval_reverse_time_and_args():
    # Backwards in time y' = -k y grows: event y = c with c per sample via args.
    k = torch.tensor([1.0, 2.0], dtype=D)
    c = torch.tensor([2.0, 100.0], dtype=D)
    y0 = torch.ones(2, 1, dtype=D)
    te = torch.linspace(0.0, -1.0, 11, dtype=D)
    ev = ode.Event(lambda t, y, a: y[:, 0] - a[1])
    sol = ode.solve(lambda t, y, a: -a[0][:, None] * y, y0, (0.0, -1.0), event=ev, t_eval=te,
                    args=(k, c), rtol=1e-10, atol=1e-12)
    # sample 0: e^{-t} = 2 at t* = -ln 2; sample 1 never reaches 100 (e^2 = 7.39)
    assert sol.status.tolist() == [1, 0]
    assert sol.t[0].item() == pytest.approx(-math.log(2.0), abs=1e-9)
    before = te >= -math.log(2.0)
    torch.testing.assert_close(sol.ys[0, before, 0], torch.exp(-te[before]), rtol=1e-8,
                               atol=1e-8)
    assert torch.isnan(sol.ys[0, ~before]).all()
    torch.testing.assert_close(sol.ys[1, :, 0], torch.exp(-2.0 * te), rtol=1e-8, atol=1e-8)


def test_event_samples_leave_the_active_set():
    sizes = []
    x0 = torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=D)

    def f(t, y):
        sizes.append(y.shape[0])
        return ball(t, y)

    y0 = torch.stack([x0, torch.zeros_like(x0)], 1)
    sol = ode.solve(f, y0, (0.0, 100.0), event=ode.Event(ground))
    torch.testing.assert_close(sol.t, torch.sqrt(2 * x0 / G), rtol=1e-7, atol=1e-7)
    assert sizes[-1] < 4 and sum(sizes) == int(sol.stats["nfe"].sum())


@settings(max_examples=15, deadline=None)
@given(x0=st.lists(st.floats(0.5, 50.0), min_size=1, max_size=6),
       v0=st.floats(-5.0, 5.0), pick=st.integers(0, 5))
def test_event_time_is_batch_independent(x0, v0, pick):
    # A sample's event time and stopped state do not depend on the rest of the batch
    # (compaction, other samples' events), and match the closed form of the free fall.
    pick = pick % len(x0)
    y0 = torch.tensor([[x, v0] for x in x0], dtype=D)
    sol = ode.solve(ball, y0, (0.0, 100.0), event=ode.Event(ground, direction=-1))
    alone = ode.solve(ball, y0[pick:pick + 1], (0.0, 100.0), event=ode.Event(ground,
                                                                            direction=-1))
    assert torch.equal(sol.t[pick:pick + 1], alone.t)
    assert torch.equal(sol.y[pick:pick + 1], alone.y)
    x = torch.tensor(x0, dtype=D)
    exact = (v0 + torch.sqrt(v0 ** 2 + 2 * G * x)) / G
    torch.testing.assert_close(sol.t, exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_event_float32_every_adaptive_method(method):
    # float32 and every adaptive method's own dense output: t* = sqrt(2 x0 / g).
    x0 = torch.tensor([10.0, 2.0, 0.5])
    y0 = torch.stack([x0, torch.zeros_like(x0)], 1)
    sol = ode.solve(ball, y0, (0.0, 10.0), event=ode.Event(ground, direction=-1),
                    method=method, rtol=1e-6, atol=1e-6)
    assert sol.t.dtype == torch.float32 and (sol.status == 1).all()
    # float32 round-off accumulates over the steps (bosh3 takes the most): ~1e-5 relative
    torch.testing.assert_close(sol.t, torch.sqrt(2 * x0 / G), rtol=2e-5, atol=2e-5)


# --- deferred root location ------------------------------------------------------------------
# Without t_eval and dense output, event roots are located after the loop for all samples at
# once; a terminal event with t_eval (or dense output) locates them in the step that crossed.

def oscillator(t, y):
    return torch.stack([y[:, 1], -y[:, 0]], 1)


@settings(max_examples=20, deadline=None)
@given(x0=st.lists(st.sampled_from([1.0, 2.5, 7.0]) | st.floats(0.5, 50.0), min_size=1,
                   max_size=5),
       v0=st.floats(-5.0, 5.0), pick=st.integers(0, 7), graph=st.booleans())
def test_deferred_terminal_roots_are_batch_independent(x0, v0, pick, graph):
    # Duplicates cross in the same step (several roots of one step located together), the
    # fixed 0.5 and 40.0 cross in different steps; a sample alone gets the same bits, on the
    # fast path and with an autograd graph, and the closed form of the free fall.
    x0 = x0 + [x0[0], 0.5, 40.0]
    pick = pick % len(x0)
    y0 = torch.tensor([[x, v0] for x in x0], dtype=D).requires_grad_(graph)
    ev = ode.Event(ground, direction=-1)
    sol = ode.solve(ball, y0, (0.0, 100.0), event=ev)
    alone = ode.solve(ball, y0[pick:pick + 1], (0.0, 100.0), event=ev)
    assert sol.status.tolist() == [1] * len(x0)
    assert torch.equal(sol.t[pick:pick + 1], alone.t)
    assert torch.equal(sol.y[pick:pick + 1], alone.y)
    assert torch.equal(sol.t_event[pick:pick + 1], alone.t_event)
    x = torch.tensor(x0, dtype=D)
    exact = (v0 + torch.sqrt(v0 ** 2 + 2 * G * x)) / G
    torch.testing.assert_close(sol.t.detach(), exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sol.y[:, 1].detach(), v0 - G * exact, rtol=1e-5, atol=1e-5)
    if graph:  # dt*/dx0 = 1 / (g t* - v0) = 1 / sqrt(v0^2 + 2 g x0)
        (g,) = torch.autograd.grad(sol.t.sum(), y0)
        torch.testing.assert_close(g[:, 0], 1.0 / torch.sqrt(v0 ** 2 + 2 * G * x),
                                   rtol=1e-5, atol=1e-8)


@settings(max_examples=15, deadline=None)
@given(amp=st.lists(st.floats(0.6, 3.0), min_size=1, max_size=5), c=st.floats(-0.5, 0.5),
       pick=st.integers(0, 5))
def test_deferred_non_terminal_first_crossing_is_batch_independent(amp, c, pick):
    # x = a cos t crosses c every ~pi until t1 = 20 (several crossings per sample, the first
    # at arccos(c / a)); only the first is reported, alone and in a batch alike.
    amp = amp + [amp[0]]
    pick = pick % len(amp)
    y0 = torch.tensor([[a, 0.0] for a in amp], dtype=D)
    ev = ode.Event(lambda t, y: y[:, 0] - c, terminal=False)
    kw = dict(event=ev, rtol=1e-9, atol=1e-11)
    sol = ode.solve(oscillator, y0, (0.0, 20.0), **kw)
    alone = ode.solve(oscillator, y0[pick:pick + 1], (0.0, 20.0), **kw)
    assert torch.equal(sol.t_event[pick:pick + 1], alone.t_event)
    assert torch.equal(sol.y[pick:pick + 1], alone.y)
    a = torch.tensor(amp, dtype=D)
    torch.testing.assert_close(sol.t_event, torch.arccos(c / a), rtol=1e-7, atol=1e-7)
    assert sol.status.tolist() == [0] * len(amp) and sol.stats["event_mask"].all()


def _count_deferred(monkeypatch):
    solve_mod = importlib.import_module("solvers.ode.solve")  # the module, not the function
    calls = []
    locate = solve_mod._EventStash.locate

    def counting(self, *a, **k):
        calls.append(len(self.parts))
        return locate(self, *a, **k)

    monkeypatch.setattr(solve_mod._EventStash, "locate", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deferred_and_immediate_roots_agree_with_closed_forms(monkeypatch, dtype):
    # t_eval or dense output make a terminal event locate its root in the step (it ends the
    # outputs there); without them the root is located after the loop. Same bits either way,
    # and both against closed forms: linear decay y' = -k y to c at t* = ln(y0 / c) / k, and
    # the free fall x0 -> 0 at t* = sqrt(2 x0 / g) with velocity -g t*.
    calls = _count_deferred(monkeypatch)
    k, c = 0.7, 0.3
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    close = 1e-9 if dtype == torch.float64 else 1e-5
    problems = [
        (lambda t, y: -k * y, torch.tensor([[1.0], [2.0], [5.0], [40.0]], dtype=dtype),
         ode.Event(lambda t, y: c - y[:, 0]),
         lambda y0: (torch.log(y0[:, 0] / c) / k, torch.full_like(y0, c))),
        (ball, torch.tensor([[10.0, 0.0], [5.0, 0.0], [1.0, 0.0], [80.0, 0.0]], dtype=dtype),
         ode.Event(ground, direction=-1),
         lambda y0: (torch.sqrt(2 * y0[:, 0] / G),
                     torch.stack([torch.zeros_like(y0[:, 0]),
                                  -G * torch.sqrt(2 * y0[:, 0] / G)], 1))),
    ]
    for f, y0, ev, exact in problems:
        calls.clear()
        deferred = ode.solve(f, y0, (0.0, 10.0), event=ev, **tol)
        assert len(calls) == 1 and calls[0] > 1  # roots of several steps located together
        with_eval = ode.solve(f, y0, (0.0, 10.0), event=ev, t_eval=[0.0, 0.5, 9.0], **tol)
        with_dense = ode.solve(f, y0, (0.0, 10.0), event=ev, dense_output=True, **tol)
        assert len(calls) == 1  # the immediate path stashed nothing
        t_ex, y_ex = exact(y0)
        for sol in (deferred, with_eval, with_dense):
            assert (sol.status == 1).all()
            assert torch.equal(sol.t, deferred.t) and torch.equal(sol.y, deferred.y)
            assert torch.equal(sol.t_event, deferred.t_event)
            torch.testing.assert_close(sol.t, t_ex, rtol=close, atol=close)
            # (the state's error is relative to its scale, up to 80 here)
            torch.testing.assert_close(sol.y, y_ex, rtol=close, atol=close * 100)
        assert torch.isnan(with_eval.ys[:, 2]).all()  # 9.0 lies after every event
        torch.testing.assert_close(with_dense.interpolate(with_dense.t)[:, 0], y_ex[:, 0],
                                   rtol=close, atol=close * 100)


def test_deferred_non_terminal_gradients_against_closed_form_and_finite_differences():
    # x = a cos t (a = x0 on the state, velocity 0) crosses the learned level c at
    # t* = arccos(c / a) and again later; t_event is the first crossing: dt*/dc =
    # -1 / sqrt(a^2 - c^2), dt*/da = c / (a sqrt(a^2 - c^2)). The roots are deferred and a
    # sample's later crossings are not stashed.
    c = torch.tensor(0.4, dtype=D, requires_grad=True)
    a = torch.tensor([1.0, 1.7, 3.0], dtype=D)

    def run(a, c):
        y0 = torch.stack([a, torch.zeros_like(a)], 1)
        ev = ode.Event(lambda t, y: y[:, 0] - c, terminal=False)
        return ode.solve(oscillator, y0, (0.0, 20.0), event=ev, rtol=1e-11, atol=1e-13)

    a_req = a.clone().requires_grad_()
    sol = run(a_req, c)
    torch.testing.assert_close(sol.t_event.detach(), torch.arccos(c.detach() / a), rtol=1e-9,
                               atol=1e-9)
    ga, gc = torch.autograd.grad(sol.t_event.sum(), (a_req, c))
    cd = c.detach()
    root = torch.sqrt(a ** 2 - cd ** 2)
    torch.testing.assert_close(gc, (-1.0 / root).sum(), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ga, cd / (a * root), rtol=1e-7, atol=1e-9)
    eps = 1e-6
    with torch.no_grad():
        fd = (run(a, cd + eps).t_event.sum() - run(a, cd - eps).t_event.sum()) / (2 * eps)
    assert gc.item() == pytest.approx(fd.item(), rel=1e-6)


def test_deferred_terminal_event_parameter_gradients_finite_differences():
    # A learned boundary c * (1 + w t) with per-sample k through args: samples cross many
    # steps apart and their roots are located together after the loop; the gradients of the
    # event times (w, c: only in the event function; k: in f) match central differences.
    w = torch.tensor(0.2, dtype=D, requires_grad=True)
    c = torch.tensor(0.3, dtype=D, requires_grad=True)
    k = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=D)
    y0 = torch.tensor([[1.0], [2.0], [5.0], [1.5]], dtype=D)

    def run(w, c, k):
        ev = ode.Event(lambda t, y, a: c * (1 + w * t) - y[:, 0])
        return ode.solve(lambda t, y, a: -a[:, None] * y, y0, (0.0, 10.0), event=ev, args=k,
                         rtol=1e-11, atol=1e-13)

    k_req = k.clone().requires_grad_()
    sol = run(w, c, k_req)
    assert (sol.status == 1).all()
    grads = torch.autograd.grad(sol.t.sum(), (w, c, k_req))
    eps = 1e-6
    with torch.no_grad():
        for i, gi in enumerate(grads):
            for j in range(gi.numel()):
                args = [w.detach().clone(), c.detach().clone(), k.clone()]
                args[i].view(-1)[j] += eps
                tp = run(*args).t
                args[i].view(-1)[j] -= 2 * eps
                tm = run(*args).t
                fd = (tp - tm).sum() / (2 * eps)
                assert gi.view(-1)[j].item() == pytest.approx(fd.item(), rel=1e-6)
    # d t*/d k_i only from sample i: c (1 + w t*) = y0 e^{-k t*} gives
    # dt*/dk = -t* y(t*) / (c w + k y(t*))
    td, yd = sol.t.detach(), sol.y.detach()[:, 0]
    torch.testing.assert_close(grads[2], -td * yd / (c.detach() * w.detach() + k * yd))
