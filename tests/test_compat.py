"""The torchdiffeq shim (solvers.ode.compat) runs torchdiffeq-style code and matches torchdiffeq's
own outputs and gradients; the torchdiffeq back end runs torchdiffeq on our problem spec.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import torch
import torchdiffeq
from torch import nn

from solvers.ode import compat

# torchdiffeq's README / examples/ode_demo.py problem: dy/dt = (y^3) A, y0 = [[2, 0]].
TRUE_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)


class Lambda(nn.Module):
    def forward(self, t, y):
        return torch.mm(y**3, TRUE_A)


class ODEFunc(nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():  # seeded init without touching the global RNG
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    def forward(self, t, y):
        return self.net(y**3)


def _both(fn, *args, **kw):
    return fn(compat.odeint, *args, **kw), fn(torchdiffeq.odeint, *args, **kw)


def test_readme_example_matches_torchdiffeq():
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 25.0, 100, dtype=torch.float64)

    def run(odeint):
        return odeint(Lambda(), y0, t, method="dopri5")

    ours, theirs = _both(run)
    assert ours.shape == theirs.shape == (100, 1, 2)
    # Both at rtol 1e-7 / atol 1e-9 on an oscillator whose amplitude is ~2.
    assert float((ours - theirs).abs().max()) < 1e-5


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
def test_methods_and_reverse_time_match(method):
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)  # no batch dimension
    t = torch.linspace(2.0, 0.0, 7, dtype=torch.float64)  # reverse time
    f = lambda t, y: torch.stack([y[1], -torch.sin(y[0]) + 0.1 * t])  # noqa: E731
    ours = compat.odeint(f, y0, t, method=method, rtol=1e-9, atol=1e-11)
    theirs = torchdiffeq.odeint(f, y0, t, method=method, rtol=1e-9, atol=1e-11)
    assert ours.shape == theirs.shape == (7, 2)
    # Different step sequences: compare both to a tight scipy reference; ours must be equally
    # good or better (measured: dopri5 4.4e-10 vs 4.5e-10, bosh3 1e-9 vs 6e-7, dopri8 4.6e-9 vs
    # 7.7e-7).
    ref = scipy.integrate.solve_ivp(
        lambda s, y: np.array([y[1], -np.sin(y[0]) + 0.1 * s]), (2.0, 0.0), y0.numpy(),
        method="DOP853", rtol=1e-13, atol=1e-13, t_eval=t.numpy()).y.T
    err_ours = float(np.abs(ours.numpy() - ref).max())
    err_theirs = float(np.abs(theirs.numpy() - ref).max())
    assert err_ours <= max(2 * err_theirs, 1e-8), (err_ours, err_theirs)


def test_fixed_grid_euler_is_identical():
    # Same formula, one step per grid interval: identical up to round-off.
    y0 = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    ours, theirs = _both(lambda odeint: odeint(Lambda(), y0, t, method="euler"))
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)


def test_fixed_step_size_option_matches():
    # options={"step_size": h}: steps of h (the output times are multiples of h, where
    # torchdiffeq's linear interpolation and our dense output both return the step values).
    y0 = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    ours, theirs = _both(lambda odeint: odeint(Lambda(), y0, t, method="midpoint",
                                               options={"step_size": 0.05}))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_tuple_state_matches():
    # Harmonic oscillator as a (position, velocity) tuple with different shapes.
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v0 = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 3.0, 5, dtype=torch.float64)
    f = lambda t, s: (s[1].reshape(2), -s[0].reshape(2, 1))  # noqa: E731
    ours = compat.odeint(f, (x0, v0), t, rtol=1e-10, atol=1e-12)
    assert isinstance(ours, tuple) and ours[0].shape == (5, 2) and ours[1].shape == (5, 2, 1)
    exact_x = torch.stack([torch.cos(t), torch.sin(t)], 1)
    torch.testing.assert_close(ours[0], exact_x, rtol=0, atol=1e-8)
    theirs = torchdiffeq.odeint(f, (x0, v0), t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-8)


def _grads(odeint, func, **kw):
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    ys = odeint(func, y0, t, rtol=1e-10, atol=1e-12, **kw)
    loss = (ys**2).sum()
    return torch.autograd.grad(loss, [y0, *func.parameters()])


def test_backprop_gradients_match_torchdiffeq():
    func = ODEFunc()
    for a, b in zip(_grads(compat.odeint, func), _grads(torchdiffeq.odeint, func)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("norm", [None, "seminorm"])
def test_odeint_adjoint_matches_torchdiffeq(norm):
    func = ODEFunc()
    opts = {"adjoint_options": {"norm": norm}} if norm else {}
    ours = _grads(compat.odeint_adjoint, func, **opts)
    theirs = _grads(torchdiffeq.odeint_adjoint, func, **opts)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_shim_bad_input():
    y0 = torch.tensor([1.0])
    f = lambda t, y: -y  # noqa: E731
    with pytest.raises(ValueError, match="1-D"):
        compat.odeint(f, y0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="strictly"):
        compat.odeint(f, y0, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="method"):
        compat.odeint(f, y0, torch.tensor([0.0, 1.0]), method="adams")
    with pytest.raises(ValueError, match="option"):
        compat.odeint(f, y0, torch.tensor([0.0, 1.0]), options={"jump_t": [0.5]})
    with pytest.raises(TypeError, match="y0"):
        compat.odeint(f, [1.0], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="len 2"):
        compat.odeint(f, y0, torch.tensor([0.0, 1.0, 2.0]), event_fn=lambda t, y: y[0] - 0.5)
    with pytest.raises(ValueError, match="single value"):
        compat.odeint(f, torch.ones(2), torch.tensor([0.0, 1.0]), event_fn=lambda t, y: y - 0.5)
    with pytest.raises(ValueError, match="nn.Module"):
        compat.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0]))


def test_event_fn_bouncing_ball_matches_closed_form_and_torchdiffeq():
    # Ball dropped from x0 = 10 with g = 8: impact at t* = sqrt(2 x0 / g) = 1.58114, velocity
    # -g t* = -12.649, dt*/dx0 = 1 / (g t*) = 0.079057 (REFERENCES.md); torchdiffeq's
    # odeint_event gives the same time and gradient.
    g = 8.0
    f = lambda t, s: torch.stack([s[1], torch.full_like(s[1], -g)])  # noqa: E731
    event = lambda t, s: s[0]  # noqa: E731
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    x0 = torch.tensor([10.0, 0.0], dtype=torch.float64, requires_grad=True)
    t_star, sol = compat.odeint(f, x0, t, event_fn=event, rtol=1e-10, atol=1e-12)
    exact_t = math.sqrt(2 * 10.0 / g)
    assert sol.shape == (2, 2)
    assert abs(float(t_star.detach()) - exact_t) < 1e-8
    assert abs(float(sol[1, 1]) + g * exact_t) < 1e-7
    (dt_dx0,) = torch.autograd.grad(t_star, x0)
    assert abs(float(dt_dx0[0]) - 1 / (g * exact_t)) < 1e-6
    x0_td = x0.detach().clone().requires_grad_(True)
    t_td, _ = torchdiffeq.odeint_event(f, x0_td, t[0], event_fn=event, rtol=1e-10, atol=1e-12)
    (g_td,) = torch.autograd.grad(t_td, x0_td)
    assert abs(float(t_td.detach()) - float(t_star.detach())) < 1e-8
    torch.testing.assert_close(dt_dx0, g_td, rtol=1e-6, atol=1e-9)


def test_torchdiffeq_backend_on_our_problem():
    # Our problem spec (per-sample t) run by torchdiffeq: y' = -t y, y = exp(-t^2 / 2).
    f = lambda t, y: -t[:, None] * y  # noqa: E731
    y0 = torch.ones(3, 2, dtype=torch.float64)
    t_eval = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    sol = compat.solve_with_torchdiffeq(f, y0, (0.0, 2.0), method="torchdiffeq:dopri5",
                                        rtol=1e-10, atol=1e-12, t_eval=t_eval)
    exact = torch.exp(-t_eval**2 / 2)
    torch.testing.assert_close(sol.ys, exact[None, :, None].expand(3, 3, 2), rtol=1e-8, atol=0)
    torch.testing.assert_close(sol.y, torch.full((3, 2), math.exp(-2.0), dtype=torch.float64))
    assert bool(sol.success.all())
    # One batch-coupled solve: every sample reports the same counts, nfe = 6 steps + FSAL + 2.
    assert len(set(sol.stats["nfe"].tolist())) == 1
    assert int(sol.stats["nfe"][0]) == 6 * int(sol.stats["n_steps"][0]) + 2
    fixed = compat.solve_with_torchdiffeq(f, y0, (0.0, 2.0), method="rk4", dt=0.01)
    assert int(fixed.stats["n_steps"][0]) == 200
    torch.testing.assert_close(fixed.y, sol.y, rtol=1e-8, atol=0)


def test_torchdiffeq_backend_rejects_per_sample_spans():
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.ones(2, 1)
    with pytest.raises(ValueError, match="shared"):
        compat.solve_with_torchdiffeq(f, y0, (0.0, torch.tensor([1.0, 2.0])))
    with pytest.raises(ValueError, match="unknown method"):
        compat.solve_with_torchdiffeq(f, y0, (0.0, 1.0), method="rk45")
    with pytest.raises(ValueError, match="dt"):
        compat.solve_with_torchdiffeq(f, y0, (0.0, 1.0), method="euler")
    with pytest.raises(ValueError, match="torchdiffeq equivalent"):
        compat.solve_with_torchdiffeq(f, y0, (0.0, 1.0), event=object())


def test_torchdiffeq_backend_adjoint_gradients_match_ours():
    # The same problem differentiated by torchdiffeq's adjoint (through the back end) and by
    # our backsolve adjoint: both approximate the exact gradient.
    from solvers import ode

    func = ODEFunc()
    f = lambda t, y: func(t, y)  # noqa: E731
    y0 = torch.tensor([[0.5, -0.2], [0.1, 0.3]], dtype=torch.float64)
    grads = []
    for backend in ("torchdiffeq", "ours"):
        y = y0.clone().requires_grad_(True)
        kw = dict(rtol=1e-10, atol=1e-12)
        if backend == "torchdiffeq":
            sol = compat.solve_with_torchdiffeq(func, y, (0.0, 1.0), adjoint=True, **kw)
        else:
            sol = ode.solve(f, y, (0.0, 1.0), adjoint=True,
                            adjoint_options={"adjoint_params": list(func.parameters())}, **kw)
        grads.append(torch.autograd.grad((sol.y**2).sum(), [y, *func.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# review fixes of the shim (odeint)


def test_step_size_is_ignored_by_adaptive_methods_like_torchdiffeq():
    # y'' = -100 y, y(0) = 1: y(10) = cos(100) = 0.86232. Passing step_size=0.3 on as fixed
    # steps (no error control) gave -52966; torchdiffeq ignores it with a warning.
    f = lambda t, y: torch.stack([y[1], -100 * y[0]])  # noqa: E731
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    with pytest.warns(UserWarning, match="'step_size' is ignored"):
        ours = compat.odeint(f, y0, t, method="dopri5", options={"step_size": 0.3})
    with pytest.warns(UserWarning):
        theirs = torchdiffeq.odeint(f, y0, t, method="dopri5", options={"step_size": 0.3})
    exact = math.cos(100.0)
    assert abs(float(ours[-1, 0]) - exact) < 1e-5
    assert abs(float(ours[-1, 0]) - float(theirs[-1, 0])) < 1e-5
    # Likewise a fixed-grid method ignores the adaptive options (here max_num_steps=3 would
    # otherwise stop the 10-interval grid): identical to the run without them.
    tg = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    with pytest.warns(UserWarning, match="'max_num_steps' is ignored"):
        a = compat.odeint(f, y0, tg, method="rk4", options={"max_num_steps": 3})
    torch.testing.assert_close(a, compat.odeint(f, y0, tg, method="rk4"), rtol=0, atol=0)


def test_scalar_y0_and_scalar_in_tuple_match_torchdiffeq():
    f = lambda t, y: -y  # noqa: E731
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    y0 = torch.tensor(1.0, dtype=torch.float64)
    ours = compat.odeint(f, y0, t)
    theirs = torchdiffeq.odeint(f, y0, t)
    assert ours.shape == theirs.shape == (3,)
    torch.testing.assert_close(ours, torch.exp(-t), rtol=1e-7, atol=0)
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=0)
    ft = lambda t, s: (-s[0], -2 * s[1])  # noqa: E731
    yt = (torch.tensor(1.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    ours = compat.odeint(ft, yt, t)
    theirs = torchdiffeq.odeint(ft, yt, t)
    assert [o.shape for o in ours] == [th.shape for th in theirs] == [(3,), (3, 3)]
    torch.testing.assert_close(ours[0], torch.exp(-t), rtol=1e-7, atol=0)
    torch.testing.assert_close(ours[1][:, 0], torch.exp(-2 * t), rtol=1e-7, atol=0)


def test_event_fn_float32_matches_torchdiffeq():
    # Damped oscillator (period 0.126) in float32 with an event at t* = 3: one solve to a far
    # horizon failed with DT_UNDERFLOW (step floor 8 eps 1e6 = 0.95); growing windows do not.
    k = 50.0
    f = lambda t, y: torch.stack([y[1], -k * k * y[0] - 0.1 * y[1]])  # noqa: E731
    ev = lambda t, y: t - 3.0 + 0 * y[0]  # noqa: E731
    w, a = math.sqrt(k * k - 0.0025), 0.05
    exact = math.exp(-a * 3) * (math.cos(w * 3) + a / w * math.sin(w * 3))
    y0 = torch.tensor([1.0, 0.0])
    t_star, sol = compat.odeint(f, y0, torch.tensor([0.0, 1.0]), event_fn=ev, rtol=1e-5,
                                atol=1e-7)
    t_td, sol_td = torchdiffeq.odeint_event(f, y0, torch.tensor(0.0), event_fn=ev, rtol=1e-5,
                                            atol=1e-7)
    assert sol.dtype == torch.float32 and sol.shape == (2, 2)
    assert abs(float(t_star) - 3.0) < 1e-5 and abs(float(t_td) - 3.0) < 1e-5
    # Measured: ours 0.601139, torchdiffeq 0.601153, exact 0.601189.
    assert abs(float(sol[1, 0]) - exact) < 2e-4
    assert abs(float(sol[1, 0]) - float(sol_td[-1, 0])) < 2e-4


def test_event_fn_float32_gradient_through_several_windows():
    # Ball dropped from x0 = 1e4 with g = 8 (float32): impact at t* = sqrt(2 x0 / g) = 50, in
    # the 6th window ([31, 63]); dt*/dx0 = 1 / (g t*) = 0.0025 chains through the windows.
    g = 8.0
    f = lambda t, s: torch.stack([s[1], torch.full_like(s[1], -g)])  # noqa: E731
    event = lambda t, s: s[0]  # noqa: E731
    x0 = torch.tensor([1e4, 0.0], requires_grad=True)
    t_star, sol = compat.odeint(f, x0, torch.tensor([0.0, 1.0]), event_fn=event, rtol=1e-6,
                                atol=1e-6)
    assert abs(float(t_star) - 50.0) < 1e-4
    assert abs(float(sol[1, 1]) + g * 50.0) < 1e-2
    (dt_dx0,) = torch.autograd.grad(t_star, x0)
    assert abs(float(dt_dx0[0]) - 1 / (g * 50.0)) < 1e-6
    x_td = x0.detach().clone().requires_grad_(True)
    t_td, _ = torchdiffeq.odeint_event(f, x_td, torch.tensor(0.0), event_fn=event, rtol=1e-6,
                                       atol=1e-6)
    (g_td,) = torch.autograd.grad(t_td, x_td)
    torch.testing.assert_close(dt_dx0, g_td, rtol=1e-4, atol=1e-7)


def test_t_requiring_grad_raises():
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="t requires grad"):
        compat.odeint(lambda t, y: -y, y0, t)
    with torch.no_grad():  # no graph: nothing is lost
        out = compat.odeint(lambda t, y: -y, y0, t)
    torch.testing.assert_close(out[-1], torch.full((2,), math.exp(-1.0), dtype=torch.float64))


def test_default_max_num_steps_is_torchdiffeqs():
    # y' = cos(50 t) on [0, 120] takes about 13,000 steps at rtol 1e-8 (more than solve's
    # default 10,000); y(120) = 1 + sin(6000) / 50 (measured errors: ours 1e-7, torchdiffeq
    # 1.2e-7).
    g = lambda t, y: torch.cos(50 * t) * torch.ones_like(y)  # noqa: E731
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.tensor([0.0, 120.0], dtype=torch.float64)
    ours = compat.odeint(g, y0, t, rtol=1e-8, atol=1e-10)
    theirs = torchdiffeq.odeint(g, y0, t, rtol=1e-8, atol=1e-10)
    exact = 1 + math.sin(6000.0) / 50
    assert abs(float(ours[-1, 0]) - exact) < 1e-6
    assert abs(float(ours[-1, 0]) - float(theirs[-1, 0])) < 1e-6


def test_tolerances_shaped_like_y0_and_tuple_tolerances():
    # Per-component tolerances: component (0, 0) loose (1e-2), the rest tight. torchdiffeq
    # accepts rtol shaped like y0 and, for a tuple y0, a tuple of tolerances.
    f = lambda t, y: -y  # noqa: E731
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(2, 3, dtype=torch.float64)
    rtol = torch.full((2, 3), 1e-9, dtype=torch.float64)
    rtol[0, 0] = 1e-2
    ours = compat.odeint(f, y0, t, rtol=rtol, atol=1e-12)
    theirs = torchdiffeq.odeint(f, y0, t, rtol=rtol, atol=1e-12)
    exact = math.exp(-1.0)
    assert float((ours[-1] - exact).abs().max()) < 1e-3  # loose component allowed to err
    assert float((ours[-1] - theirs[-1]).abs().max()) < 1e-3
    # Broadcasting like y0 (a (3,) rtol for a (2, 3) state) works too.
    ours_b = compat.odeint(f, y0, t, rtol=torch.full((3,), 1e-9, dtype=torch.float64),
                           atol=1e-12)
    assert float((ours_b[-1] - exact).abs().max()) < 1e-8
    yt = (torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    ft = lambda t, s: (-s[0], -2 * s[1])  # noqa: E731
    ours = compat.odeint(ft, yt, t, rtol=(1e-6, 1e-10), atol=(1e-8, 1e-12))
    theirs = torchdiffeq.odeint(ft, yt, t, rtol=(1e-6, 1e-10), atol=(1e-8, 1e-12))
    assert abs(float(ours[1][-1, 0]) - math.exp(-2.0)) < 1e-9
    assert abs(float(ours[0][-1, 0]) - float(theirs[0][-1, 0])) < 1e-5
    with pytest.raises(ValueError, match="rtol of shape"):
        compat.odeint(f, y0, t, rtol=torch.full((4,), 1e-6, dtype=torch.float64))
    with pytest.raises(ValueError, match="one entry per tensor"):
        compat.odeint(ft, yt, t, rtol=(1e-6,))
    with pytest.raises(ValueError, match="tuple with one"):
        compat.odeint(ft, yt, t, atol=torch.full((5,), 1e-6, dtype=torch.float64))


def test_single_output_time_returns_y0_like_torchdiffeq():
    calls = []
    f = lambda t, y: calls.append(1) or -y  # noqa: E731
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.5], dtype=torch.float64)
    ours = compat.odeint(f, y0, t)
    theirs = torchdiffeq.odeint(f, y0, t)
    assert ours.shape == theirs.shape == (1, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    yt = (y0, torch.ones(3, dtype=torch.float64))
    assert [o.shape for o in compat.odeint(lambda t, s: s, yt, t)] == [(1, 2), (1, 3)]


# ---------------------------------------------------------------------------------------------
# review fixes of the torchdiffeq back end (solve_with_torchdiffeq)


def _decay_problem():
    k = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    f = lambda t, y: -k * y  # noqa: E731
    return f, torch.ones(3, 1, dtype=torch.float64), k


def _direct(field, y0, t1, **kw):
    """torchdiffeq called directly on the batch (what the back end should reproduce)."""
    n = {"nfe": 0}

    def counted(t, y):
        n["nfe"] += 1
        return field(t, y)

    y = torchdiffeq.odeint(counted, y0, torch.tensor([0.0, t1], dtype=torch.float64), **kw)[-1]
    return y, n["nfe"]


@pytest.mark.parametrize("ours_kw,td_opt", [({"dt_max": 0.01}, {"max_step": 0.01}),
                                            ({"dt_min": 0.5}, {"min_step": 0.5})])
def test_backend_dt_min_dt_max_map_to_torchdiffeq_options(ours_kw, td_opt):
    f, y0, k = _decay_problem()
    kw = dict(rtol=1e-10, atol=1e-12)
    base = compat.solve_with_torchdiffeq(f, y0, (0.0, 2.0), method="TorchDiffEq:dopri5", **kw)
    sol = compat.solve_with_torchdiffeq(f, y0, (0.0, 2.0), **ours_kw, **kw)
    y_td, nfe_td = _direct(f, y0, 2.0, method="dopri5", options={"max_num_steps": 10_000,
                                                                  **td_opt}, **kw)
    torch.testing.assert_close(sol.y, y_td, rtol=1e-13, atol=0)
    assert int(sol.stats["nfe"][0]) == nfe_td
    # The option changes the solve (it used to be dropped silently): dt_max=0.01 forces >= 200
    # steps, dt_min=0.5 four coarse steps with a visibly larger error.
    assert int(sol.stats["nfe"][0]) != int(base.stats["nfe"][0])
    if "dt_max" in ours_kw:
        assert int(sol.stats["n_steps"][0]) >= 200
    else:
        err = float((sol.y - torch.exp(-2 * k)).abs().max())
        assert err > 1e-6 > float((base.y - torch.exp(-2 * k)).abs().max())
    assert sol.stats["nfe"].device == y0.device


class _Wave(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor(0.2, dtype=torch.float64))

    def forward(self, t, y):
        return -self.w * torch.sin(3 * t)[:, None] * y + self.c


@pytest.mark.parametrize("ours,theirs", [
    ({"rtol": 1e-1, "atol": 1e-1}, {"adjoint_rtol": 1e-1, "adjoint_atol": 1e-1}),
    ({"norm": "seminorm", "rtol": 1e-3, "atol": 1e-3},
     {"adjoint_rtol": 1e-3, "adjoint_atol": 1e-3, "adjoint_options": {"norm": "seminorm"}}),
    ({"method": "bosh3", "rtol": 1e-4, "atol": 1e-4},
     {"adjoint_method": "bosh3", "adjoint_rtol": 1e-4, "adjoint_atol": 1e-4}),
    ({"adjoint_params": "w only"}, {"adjoint_params": "w only"}),
])
def test_backend_adjoint_options_map_to_torchdiffeq(ours, theirs):
    m = _Wave()
    y0 = torch.ones(3, 1, dtype=torch.float64)
    kw = dict(rtol=1e-10, atol=1e-10)
    params = [m.w] if "adjoint_params" in ours else [m.w, m.c]
    ours = {k: (params if v == "w only" else v) for k, v in ours.items()}
    theirs = {k: (tuple(params) if v == "w only" else v) for k, v in theirs.items()}
    theirs.setdefault("adjoint_params", tuple(params))
    if "adjoint_method" in theirs or "adjoint_options" in theirs:
        theirs["adjoint_options"] = {"max_num_steps": 10_000, **theirs.get("adjoint_options", {})}

    def grads(y):
        return torch.autograd.grad(y.sum(), params, allow_unused=True)

    g_base = grads(compat.solve_with_torchdiffeq(m, y0, (0.0, 5.0), adjoint=True, **kw).y)
    g_ours = grads(compat.solve_with_torchdiffeq(m, y0, (0.0, 5.0), adjoint=True,
                                                 adjoint_options=ours, **kw).y)
    field = lambda t, y: m(t.expand(3), y)  # noqa: E731
    y_td = torchdiffeq.odeint_adjoint(field, y0, torch.tensor([0.0, 5.0], dtype=torch.float64),
                                      method="dopri5", options={"max_num_steps": 10_000},
                                      **theirs, **kw)[-1]
    g_td = grads(y_td)
    for a, b in zip(g_ours, g_td):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if "adjoint_params" not in ours:
        # The option changes the gradient (it used to be dropped silently).
        assert float((g_ours[0] - g_base[0]).abs()) > 1e-9
    else:
        assert len(g_ours) == 1
        torch.testing.assert_close(g_ours[0], g_base[0], rtol=1e-12, atol=0)


def test_backend_rejects_what_torchdiffeq_cannot_do():
    f, y0, _ = _decay_problem()
    with pytest.raises(ValueError, match="cannot force fixed steps"):
        compat.solve_with_torchdiffeq(f, y0, (0.0, 1.0), method="dopri5", dt=0.1)
    from solvers import ode
    with pytest.raises(ValueError, match="cannot force fixed steps"):
        ode.solve(f, y0, (0.0, 1.0), method="torchdiffeq:dopri5", dt=0.1)
    m = _Wave()
    with pytest.raises(ValueError, match=r"adjoint_options \['bogus'\]"):
        compat.solve_with_torchdiffeq(m, y0, (0.0, 1.0), adjoint=True,
                                      adjoint_options={"bogus": 1})
    with pytest.raises(ValueError, match="fixed-step adjoint method 'rk4'"):
        compat.solve_with_torchdiffeq(m, y0, (0.0, 1.0), adjoint=True,
                                      adjoint_options={"method": "rk4"})
    with pytest.raises(ValueError, match="norm"):
        compat.solve_with_torchdiffeq(m, y0, (0.0, 1.0), adjoint=True,
                                      adjoint_options={"norm": lambda x: x.abs().max()})
