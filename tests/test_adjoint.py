"""Backsolve adjoint (solvers.ode.adjoint) against backprop through the solver, finite
differences (gradcheck) and torchdiffeq's ``odeint_adjoint`` on the same problem; the seminorm
must give the same gradients with no more backward evaluations (Kidger, Chen & Lyons 2021).
"""

import math

import pytest
import torch
import torchdiffeq
from torch import nn

from solvers import ode

TOL = dict(rtol=1e-10, atol=1e-10)


class Field(nn.Module):
    """A small tanh MLP field with explicit time input."""

    def __init__(self, d=2, h=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(0.8 * torch.randn(h, d + 1, generator=g, dtype=torch.float64))
        self.b1 = nn.Parameter(0.1 * torch.randn(h, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(0.8 * torch.randn(d, h, generator=g, dtype=torch.float64))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        z = torch.cat([y, t.reshape(-1, 1).expand(y.shape[0], 1)], 1)
        return torch.tanh(z @ self.w1.T + self.b1) @ self.w2.T


def _y0(batch=4, d=2, seed=1):
    return torch.randn(batch, d, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _grads(field, y0, t_span, adjoint, t_eval=None, adjoint_options=None, **kw):
    y0 = y0.clone().requires_grad_(True)
    sol = ode.solve(field, y0, t_span, t_eval=t_eval, adjoint=adjoint,
                    adjoint_options=adjoint_options, **{**TOL, **kw})
    w = torch.linspace(0.5, 1.5, sol.y.numel(), dtype=torch.float64).reshape(sol.y.shape)
    loss = (w * sol.y).sum() + (sol.y**2).sum()
    if t_eval is not None:
        loss = loss + (sol.ys**3).sum()
    params = list(field.parameters())
    grads = torch.autograd.grad(loss, [y0, *params])
    return grads, sol


def _assert_grads_close(ga, gb, rtol=1e-6, atol=1e-8):
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_adjoint_matches_backprop_final_state():
    field = Field()
    y0 = _y0()
    g_bp, _ = _grads(field, y0, (0.0, 1.0), adjoint=False)
    g_adj, sol = _grads(field, y0, (0.0, 1.0), adjoint=True)
    _assert_grads_close(g_adj, g_bp)
    assert sol.adjoint_stats["n_segments"] == 1
    assert bool((sol.adjoint_stats["nfe"] > 0).all())


def test_adjoint_matches_backprop_with_t_eval_and_per_sample_horizons():
    field = Field(seed=3)
    y0 = _y0(batch=3)
    t1 = torch.tensor([0.5, 1.0, 1.7], dtype=torch.float64)
    t_eval = torch.stack([torch.linspace(0.1, float(s) * 0.9, 4, dtype=torch.float64) for s in t1])
    g_bp, _ = _grads(field, y0, (0.0, t1), adjoint=False, t_eval=t_eval)
    g_adj, sol = _grads(field, y0, (0.0, t1), adjoint=True, t_eval=t_eval)
    _assert_grads_close(g_adj, g_bp)
    assert sol.adjoint_stats["n_segments"] == 5  # 4 evaluation times + the initial segment


def test_adjoint_reverse_time_and_shared_t_eval_including_endpoints():
    field = Field(seed=5)
    y0 = _y0(batch=2)
    t_eval = torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=torch.float64)  # hits t0 and t1 exactly
    g_bp, _ = _grads(field, y0, (1.0, 0.0), adjoint=False, t_eval=t_eval)
    g_adj, _ = _grads(field, y0, (1.0, 0.0), adjoint=True, t_eval=t_eval)
    _assert_grads_close(g_adj, g_bp)


def test_adjoint_closure_with_adjoint_params():
    # Not a Module: parameters are given explicitly (the batched-cotangent path of the VJP).
    w = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=torch.float64, requires_grad=True)

    def f(t, y):
        return torch.sin(y @ w.T) + 0.1 * t[:, None]

    y0 = _y0(batch=3)
    out = {}
    for adjoint in (False, True):
        y = y0.clone().requires_grad_(True)
        sol = ode.solve(f, y, (0.0, 2.0), adjoint=adjoint,
                        adjoint_options={"adjoint_params": [w]} if adjoint else None, **TOL)
        out[adjoint] = torch.autograd.grad((sol.y**2).sum(), [y, w])
    _assert_grads_close(out[True], out[False])


def test_adjoint_gradcheck_float64():
    w = torch.tensor([[0.2, -0.7], [0.9, -0.1]], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=torch.float64, requires_grad=True)

    def fn(y0, w):
        f = lambda t, y: torch.tanh(y @ w.T)  # noqa: E731
        sol = ode.solve(f, y0, (0.0, 0.7), adjoint=True, rtol=1e-12, atol=1e-12,
                        adjoint_options={"adjoint_params": [w]})
        return sol.y

    assert torch.autograd.gradcheck(fn, (y0, w), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_adjoint_matches_torchdiffeq_odeint_adjoint():
    # torchdiffeq solves the batch as one coupled system; with tight tolerances both adjoints
    # approximate the same exact gradient.
    field = Field(seed=7)
    y0 = _y0(batch=3)
    g_ours, _ = _grads(field, y0, (0.0, 1.5), adjoint=True)
    y = y0.clone().requires_grad_(True)
    ys = torchdiffeq.odeint_adjoint(lambda t, x: field(t.expand(x.shape[0]), x), y,
                                    torch.tensor([0.0, 1.5], dtype=torch.float64), rtol=1e-10,
                                    atol=1e-10, adjoint_params=tuple(field.parameters()))
    yT = ys[-1]
    w = torch.linspace(0.5, 1.5, yT.numel(), dtype=torch.float64).reshape(yT.shape)
    g_td = torch.autograd.grad((w * yT).sum() + (yT**2).sum(), [y, *field.parameters()])
    _assert_grads_close(g_ours, g_td, rtol=1e-6, atol=1e-8)


def test_seminorm_same_gradients_fewer_backward_evaluations():
    field = Field(d=2, h=16, seed=11)
    y0 = _y0(batch=4)
    kw = dict(rtol=1e-6, atol=1e-8)
    nfe = {}
    grads = {}
    for norm in ("full", "seminorm"):
        y = y0.clone().requires_grad_(True)
        sol = ode.solve(field, y, (0.0, 3.0), adjoint=True, adjoint_options={"norm": norm}, **kw)
        field.nfe = 0
        grads[norm] = torch.autograd.grad((sol.y**2).sum(), [y, *field.parameters()])
        nfe[norm] = (field.nfe, int(sol.adjoint_stats["nfe"].sum()))
    y = y0.clone().requires_grad_(True)
    sol = ode.solve(field, y, (0.0, 3.0), **TOL)
    exact = torch.autograd.grad((sol.y**2).sum(), [y, *field.parameters()])
    for norm in ("full", "seminorm"):
        _assert_grads_close(grads[norm], exact, rtol=1e-3, atol=1e-5)
    assert nfe["seminorm"][1] <= nfe["full"][1], nfe
    assert nfe["seminorm"][0] <= nfe["full"][0], nfe


def test_adjoint_backward_overrides():
    field = Field(seed=2)
    y0 = _y0(batch=2)
    g_bp, _ = _grads(field, y0, (0.0, 1.0), adjoint=False)
    g_adj, _ = _grads(field, y0, (0.0, 1.0), adjoint=True,
                      adjoint_options={"method": "dopri8", "rtol": 1e-11, "atol": 1e-11})
    _assert_grads_close(g_adj, g_bp)


def test_adjoint_bad_input():
    field = Field()
    y0 = _y0()
    with pytest.raises(ValueError, match="unknown key"):
        ode.solve(field, y0, (0.0, 1.0), adjoint=True, adjoint_options={"nrom": "seminorm"})
    with pytest.raises(ValueError, match="norm"):
        ode.solve(field, y0, (0.0, 1.0), adjoint=True, adjoint_options={"norm": "l1"})
    with pytest.raises(TypeError, match="adjoint_params"):
        ode.solve(field, y0, (0.0, 1.0), adjoint=True, adjoint_options={"adjoint_params": [1.0]})
    with pytest.raises(NotImplementedError, match="event"):
        ode.solve(field, y0, (0.0, 1.0), adjoint=True,
                  event=ode.Event(lambda t, y: y[:, 0] - 10.0))
    # args that require grad would get no gradient from the adjoint: a clear error instead
    scale = torch.ones(y0.shape[0], dtype=y0.dtype, requires_grad=True)
    with pytest.raises(NotImplementedError, match="args"):
        ode.solve(ScaledField(), y0, (0.0, 1.0), args=scale, adjoint=True)
    with torch.no_grad():  # nothing to differentiate: allowed
        ode.solve(ScaledField(), y0, (0.0, 1.0), args=scale, adjoint=True)


class ScaledField(Field):
    """Field(t, y) * args: a per-sample scale passed through `args` (gathered by compaction)."""

    def forward(self, t, y, scale):
        return super().forward(t, y) * scale[:, None]


@pytest.mark.parametrize("as_module", [True, False], ids=["module", "closure"])
def test_adjoint_with_per_sample_args(as_module):
    field = ScaledField(seed=13)
    y0 = _y0(batch=3)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    t1 = torch.tensor([0.4, 1.0, 1.3], dtype=torch.float64)
    f = field if as_module else (lambda t, y, s: field(t, y, s))
    out = {}
    for adjoint in (False, True):
        y = y0.clone().requires_grad_(True)
        opts = {"adjoint_params": list(field.parameters())} if adjoint and not as_module else None
        sol = ode.solve(f, y, (0.0, t1), args=scale, adjoint=adjoint, adjoint_options=opts, **TOL)
        out[adjoint] = torch.autograd.grad((sol.y**2).sum(), [y, *field.parameters()])
    _assert_grads_close(out[True], out[False])


@pytest.mark.parametrize("as_module", [True, False], ids=["vmap", "batched-grad"])
def test_adjoint_large_batch_paths(as_module):
    # More than 8 active samples: per-sample VJPs by torch.func.vmap (Module) or by
    # autograd.grad(is_grads_batched=True) (closure with adjoint_params).
    field = Field(seed=17)
    y0 = _y0(batch=12)
    f = field if as_module else (lambda t, y: field(t, y))
    opts = None if as_module else {"adjoint_params": list(field.parameters())}
    out = {}
    for adjoint in (False, True):
        y = y0.clone().requires_grad_(True)
        sol = ode.solve(f, y, (0.0, 0.5), adjoint=adjoint,
                        adjoint_options=opts if adjoint else None, rtol=1e-9, atol=1e-9)
        out[adjoint] = torch.autograd.grad((sol.y**2).sum(), [y, *field.parameters()])
    _assert_grads_close(out[True], out[False], rtol=1e-6, atol=1e-8)


def test_adjoint_time_span_gradients():
    # y' = -k y: y(t1) = y0 exp(-k (t1 - t0)); L = sum y(t1)^2 gives
    # dL/dt1 = -2 k sum y(t1)^2 per sample and dL/dt0 = +2 k sum over the batch.
    k = 0.7
    f = lambda t, y: -k * y  # noqa: E731
    y0 = _y0(batch=3)
    t0 = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    sol = ode.solve(f, y0, (t0, t1), adjoint=True, **TOL)
    g0, g1 = torch.autograd.grad((sol.y**2).sum(), [t0, t1])
    y1 = y0 * torch.exp(-k * (t1.detach() - 0.2))[:, None]
    torch.testing.assert_close(g1, -2 * k * (y1**2).sum(1), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(g0, 2 * k * (y1**2).sum(), rtol=1e-8, atol=1e-10)
    # Backprop through the solver gives the same dL/dt1.
    sol_bp = ode.solve(f, y0, (0.2, t1), **TOL)
    (g1_bp,) = torch.autograd.grad((sol_bp.y**2).sum(), [t1])
    torch.testing.assert_close(g1, g1_bp, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------- review: failures, dt, closures

D64 = torch.float64


class _NanAfterHalf(nn.Module):
    """y' = -k y; NaN for samples starting above 5 once t > 0.5 (they fail: NONFINITE)."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(1.0, dtype=D64))

    def forward(self, t, y):
        out = -self.k * y
        bad = (t > 0.5) & (y[:, 0] > 5)
        return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)


def test_adjoint_with_t_eval_skips_the_points_after_a_sample_failed():
    # The backward pass used to integrate the failed sample forward to its later t_eval points,
    # into the NaN region, and raise. Now: the closed form sum_te sum_y0 -te y0 exp(-te) for
    # dL/dk, equal to backpropagation's, and zero gradient for the failed sample.
    f = _NanAfterHalf()
    te = torch.tensor([0.25, 0.75, 1.0], dtype=D64)
    grads = {}
    for adjoint in (False, True):
        y0 = torch.tensor([[1.0], [2.0], [10.0]], dtype=D64, requires_grad=True)
        sol = ode.solve(f, y0, (0.0, 1.0), t_eval=te, throw=False, adjoint=adjoint, **TOL)
        assert sol.status.tolist() == [0, 0, int(ode.Status.NONFINITE)]
        grads[adjoint] = torch.autograd.grad(sol.ys[:2].sum(), (f.k, y0))
    exact = sum(-t * v * math.exp(-t) for t in te.tolist() for v in (1.0, 2.0))
    for gk, gy in grads.values():
        assert gk.item() == pytest.approx(exact, rel=1e-7)
        assert gy[2].item() == 0.0
    torch.testing.assert_close(grads[True][1], grads[False][1], rtol=1e-7, atol=0)


def test_adjoint_with_per_sample_fixed_steps_and_a_zero_length_span():
    # dt of shape (batch,) was passed whole to the backward solve of the active samples.
    k = torch.tensor(0.7, dtype=D64, requires_grad=True)
    dt = torch.tensor([0.01, 0.02, 0.01], dtype=D64)
    t1 = torch.tensor([1.0, 0.0, 1.0], dtype=D64)
    out = {}
    for adjoint in (False, True):
        y0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=D64, requires_grad=True)
        sol = ode.solve(lambda t, y: -k * y, y0, (0.0, t1), method="rk4", dt=dt,
                        adjoint=adjoint, adjoint_options={"adjoint_params": [k]} if adjoint
                        else None)
        out[adjoint] = torch.autograd.grad(sol.y.sum(), (k, y0))
    # closed form: d/dk sum y0 exp(-k t1) = -(1 + 3) exp(-0.7)
    assert out[True][0].item() == pytest.approx(-4 * math.exp(-0.7), rel=1e-8)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-9, atol=0)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-9, atol=0)


K_GLOBAL = torch.tensor(0.5, dtype=D64, requires_grad=True)


def test_adjoint_refuses_a_plain_function_with_tensors_it_would_not_differentiate():
    y0 = torch.ones(2, 1, dtype=D64, requires_grad=True)
    k = torch.tensor(0.5, dtype=D64, requires_grad=True)
    module = nn.Linear(1, 1).double()
    for f, name in ((lambda t, y: -k * y, "k"), (lambda t, y: -K_GLOBAL * y, "K_GLOBAL"),
                    (lambda t, y: module(y), "module.weight"), (module.forward, "self.weight")):
        with pytest.raises(ValueError, match=rf"tensors requiring grad \({name}[,)]"):
            ode.solve(f, y0, (0.0, 1.0), adjoint=True)
    # named explicitly: the gradient is the closed form's, d/dk (y0 e^{-k}) = -y0 e^{-k}
    sol = ode.solve(lambda t, y: -k * y, y0, (0.0, 1.0), adjoint=True,
                    adjoint_options={"adjoint_params": [k]}, **TOL)
    (gk,) = torch.autograd.grad(sol.y.sum(), k)
    assert gk.item() == pytest.approx(-2 * math.exp(-0.5), rel=1e-8)
    # an empty list: y0 only, no error
    sol = ode.solve(lambda t, y: -k * y, y0, (0.0, 1.0), adjoint=True,
                    adjoint_options={"adjoint_params": []}, **TOL)
    (gy,) = torch.autograd.grad(sol.y.sum(), y0)
    torch.testing.assert_close(gy, torch.full_like(gy, math.exp(-0.5)), rtol=1e-8, atol=0)
    # a plain function of y alone is fine as before
    ode.solve(lambda t, y: -y, y0, (0.0, 1.0), adjoint=True)


def test_a_failed_backward_solve_names_the_batch_sample():
    # Sample 2 needs many backward steps (max_steps 12), sample 1 has a zero-length span and
    # is not in the backward solve: the error must say sample 2 (it said sample 1).
    k = torch.tensor(1.0, dtype=D64, requires_grad=True)
    f = lambda t, y: -k * y * (1 + 50 * (y[:, :1] > 2.5))  # noqa: E731
    y0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=D64, requires_grad=True)
    t1 = torch.tensor([1.0, 0.0, 1.0], dtype=D64)
    sol = ode.solve(f, y0, (0.0, t1), adjoint=True, throw=False,
                    adjoint_options={"adjoint_params": [k], "max_steps": 12})
    assert (sol.status == 0).all()
    with pytest.raises(ode.SolveError, match=r"backward solve.*\n  sample 2: MAX_STEPS"):
        sol.y.sum().backward()


class _Holder:
    def __init__(self, k):
        self.k = k

    def field(self, t, y):
        return -self.k * y


class _CallableField:
    def __init__(self, k):
        self.k = k

    def __call__(self, t, y):
        return -self.k * y


def test_adjoint_grad_tensor_check_follows_partials_objects_and_inner_closures():
    import functools

    k = torch.tensor(0.5, dtype=D64, requires_grad=True)
    y0 = torch.ones(2, 1, dtype=D64, requires_grad=True)

    def make_inner():
        def inner(y):
            return -k * y
        return inner

    inner = make_inner()
    cases = [(functools.partial(lambda t, y, kk: -kk * y, kk=k), "partial argument kk"),
             (_CallableField(k), "_CallableField.k"), (_Holder(k).field, "self.k"),
             (lambda t, y: inner(y), "inner.k")]
    for f, name in cases:
        with pytest.raises(ValueError, match=rf"requiring grad \({name}\)"):
            ode.solve(f, y0, (0.0, 1.0), adjoint=True)


K = torch.tensor(0.5, dtype=D64, requires_grad=True)  # a global named like the attribute below


def test_adjoint_grad_tensor_check_reads_loaded_globals_not_attribute_names():
    # `cfg.K` is a float attribute; the global tensor `K` is not used: no error, and the y0
    # gradient is the closed form exp(-0.25).
    cfg = type("Cfg", (), {"K": 0.25})()
    y0 = torch.ones(2, 1, dtype=D64, requires_grad=True)
    sol = ode.solve(lambda t, y: -cfg.K * y, y0, (0.0, 1.0), adjoint=True, **TOL)
    (gy,) = torch.autograd.grad(sol.y.sum(), y0)
    torch.testing.assert_close(gy, torch.full_like(gy, math.exp(-0.25)), rtol=1e-8, atol=0)
