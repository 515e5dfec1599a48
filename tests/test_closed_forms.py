"""torchdiffeq's closed-form problems (tests/problems.py of rtqichen/torchdiffeq) on our solver.

t in [1, 8], forward and reverse time, float32 and float64, every adaptive method plus rk4. The
thresholds on the maximum relative error over the output grid are torchdiffeq's in float32
(3e-4, 2e-3 for `linear`, 5e-2 for `exp`, 4e-3 for bosh3) and 1e-6 in float64 (our tolerances
there are 1e-10).
"""

import numpy as np
import pytest
import torch
from problems import CLOSED_FORMS

from solvers import ode

ADAPTIVE = ["bosh3", "dopri5", "tsit5", "dopri8"]
N_EVAL = 8


def _threshold(name, method, dtype):
    if dtype == torch.float64:
        return 1e-4 if method == "bosh3" else 1e-6
    if method == "bosh3":
        return 4e-3
    return {"linear": 2e-3, "exp": 5e-2}.get(name, 3e-4)


def _grid(prob, reverse):
    t = np.linspace(prob.t0, prob.t1, N_EVAL)
    return t[::-1].copy() if reverse else t


def _solve(prob, method, dtype, reverse, **kw):
    t = _grid(prob, reverse)
    y0 = torch.as_tensor(prob.exact(t[0]), dtype=dtype)[None]
    if dtype == torch.float64:
        # bosh3 (order 3) at 1e-10 would need thousands of steps: 1e-8 and a 1e-4 threshold.
        tol = dict(rtol=1e-8, atol=1e-8) if method == "bosh3" else dict(rtol=1e-10, atol=1e-10)
    else:
        tol = dict(rtol=1e-5, atol=1e-6)
    if method in ("euler", "midpoint", "heun", "rk4"):
        tol = dict(dt=2.0**-6)
    sol = ode.solve(prob.f_torch, y0, (float(t[0]), float(t[-1])), method=method,
                    t_eval=torch.as_tensor(t, dtype=dtype), max_steps=100_000, **tol, **kw)
    exact = np.stack([prob.exact(s) for s in t])  # (n, d)
    got = sol.ys.detach().double().numpy()  # (1, n, d)
    # Relative error per output time in the max norm (for the scalar problems this is
    # torchdiffeq's |y - exact| / |exact|; for `linear` it avoids dividing by components that
    # cross zero).
    rel = np.abs(got[0] - exact).max(axis=1) / np.abs(exact).max(axis=1)
    return rel.max(), sol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_closed_form(name, method, reverse, dtype):
    prob = CLOSED_FORMS[name]
    err, sol = _solve(prob, method, dtype, reverse)
    assert bool(sol.success.all())
    assert sol.ys.dtype == dtype
    assert err < _threshold(name, method, dtype), f"{name}/{method}: max rel err {err:.2e}"


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_closed_form_rk4_fixed_step(name, reverse):
    # Classical RK4 with h = 2^-6 on [1, 8]: global error ~ C h^4 (torchdiffeq's 3e-4 threshold).
    err, sol = _solve(CLOSED_FORMS[name], "rk4", torch.float64, reverse)
    assert err < 3e-4, f"{name}: max rel err {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_closed_form_dopri8_end_value_without_t_eval(name, reverse, dtype):
    prob = CLOSED_FORMS[name]
    t0, t1 = (prob.t1, prob.t0) if reverse else (prob.t0, prob.t1)
    y0 = torch.as_tensor(prob.exact(t0), dtype=dtype)[None]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    sol = ode.solve(prob.f_torch, y0, (t0, t1), method="dopri8", **tol)
    exact = prob.exact(t1)
    err = np.abs(sol.y[0].double().numpy() - exact).max() / np.abs(exact).max()
    assert err < _threshold(name, "dopri8", dtype), f"{name}: {err:.2e}"


def test_mixed_directions_in_one_batch():
    # The sine problem forward (1 -> 8) and backward (8 -> 1) in the same batch: each sample
    # must reach its own exact end value.
    prob = CLOSED_FORMS["sine"]
    y0 = torch.tensor(np.stack([prob.exact(1.0), prob.exact(8.0)]), dtype=torch.float64)
    t0 = torch.tensor([1.0, 8.0], dtype=torch.float64)
    t1 = torch.tensor([8.0, 1.0], dtype=torch.float64)
    sol = ode.solve(prob.f_torch, y0, (t0, t1), method="dopri5", rtol=1e-10, atol=1e-10)
    exact = np.array([prob.exact(8.0), prob.exact(1.0)])
    rel = np.abs(sol.y.numpy() - exact) / np.abs(exact)
    assert rel.max() < 1e-6
    assert torch.equal(sol.t, t1)
