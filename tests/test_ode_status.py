"""Failures as values: per-sample statuses, SolveError, and clear errors for bad input."""

import math
import warnings

import pytest
import torch

from solvers import ode

D = torch.float64


def test_status_codes():
    assert [s.value for s in ode.Status] == [0, 1, 2, 3, 4]
    assert [s.name for s in ode.Status] == ["SUCCESS", "EVENT", "MAX_STEPS", "DT_UNDERFLOW",
                                            "NONFINITE"]
    assert issubclass(ode.SolveError, RuntimeError)


def test_blow_up_fails_per_sample_and_good_samples_are_untouched():
    # y' = y^2, y(0) = y0 blows up at t = 1/y0. Integrating to t = 2 fails for y0 in {1, 2}
    # (DT_UNDERFLOW or NONFINITE) near t = 1/y0, while y0 = 0.25 and 0.4 succeed with the
    # closed form y = y0 / (1 - y0 t), bit-identical to solving them alone.
    y0 = torch.tensor([[0.25], [1.0], [0.4], [2.0]], dtype=D)
    f = lambda t, y: y * y  # noqa: E731
    sol = ode.solve(f, y0, (0.0, 2.0), throw=False, rtol=1e-8, atol=1e-10)
    assert sol.status[[0, 2]].tolist() == [0, 0]
    assert set(sol.status[[1, 3]].tolist()) <= {int(ode.Status.DT_UNDERFLOW),
                                                int(ode.Status.NONFINITE)}
    torch.testing.assert_close(sol.t[[1, 3]], torch.tensor([1.0, 0.5], dtype=D), rtol=1e-6,
                               atol=1e-6)
    exact = y0[[0, 2], 0] / (1 - 2.0 * y0[[0, 2], 0])
    torch.testing.assert_close(sol.y[[0, 2], 0], exact, rtol=1e-6, atol=1e-8)
    alone = ode.solve(f, y0[[0, 2]], (0.0, 2.0), rtol=1e-8, atol=1e-10)
    assert torch.equal(alone.y, sol.y[[0, 2]])
    assert torch.equal(alone.stats["n_steps"], sol.stats["n_steps"][[0, 2]])
    assert sol.success.tolist() == [True, False, True, False]


def test_nan_in_one_sample_is_contained():
    # f is NaN for sample 1 only (from the start): it ends NONFINITE after shrinking the step;
    # the others match the closed form and are bit-identical to solving them alone.
    def f(t, y):
        return torch.where(y > 1.5, torch.full_like(y, float("nan")), -y)

    y0 = torch.tensor([[1.0], [2.0], [0.5]], dtype=D)
    sol = ode.solve(f, y0, (0.0, 1.0), throw=False)
    assert sol.status.tolist() == [0, 4, 0]
    assert sol.t[1].item() == 0.0 and sol.stats["n_accepted"][1].item() == 0
    torch.testing.assert_close(sol.y[[0, 2], 0], torch.tensor([1.0, 0.5], dtype=D)
                               * math.exp(-1.0), rtol=1e-6, atol=1e-8)
    alone = ode.solve(f, y0[[0, 2]], (0.0, 1.0))
    assert torch.equal(alone.y, sol.y[[0, 2]])
    # Fixed-step methods cannot shrink: the sample fails at once.
    sol = ode.solve(f, y0, (0.0, 1.0), method="rk4", dt=0.1, throw=False)
    assert sol.status.tolist() == [0, 4, 0]
    # A NaN appearing mid-way (f NaN once t > 0.5) is reported at the time reached.
    g = lambda t, y: torch.where((t[:, None] > 0.5) & (y < 0), float("nan"), -y)  # noqa: E731
    sol = ode.solve(g, torch.tensor([[1.0], [-1.0]], dtype=D), (0.0, 1.0), throw=False)
    assert sol.status.tolist() == [0, 4]
    assert 0.4 < sol.t[1].item() <= 0.5


def test_max_steps_and_throw_message():
    y0 = torch.tensor([[1.0], [2.0], [1.0]], dtype=D)
    t1 = torch.tensor([1.0, 1.0, 0.0], dtype=D)
    sol = ode.solve(lambda t, y: -y, y0, (0.0, t1), method="euler", dt=0.01, max_steps=10,
                    throw=False)
    assert sol.status.tolist() == [2, 2, 0]
    torch.testing.assert_close(sol.t[:2], torch.full((2,), 0.1, dtype=D))
    torch.testing.assert_close(sol.y[:2, 0], y0[:2, 0] * 0.99 ** 10)  # Euler's closed form
    with pytest.raises(ode.SolveError) as info:
        ode.solve(lambda t, y: -y, y0, (0.0, t1), method="euler", dt=0.01, max_steps=10)
    msg = str(info.value)
    assert "2 of 3 samples" in msg and "sample 0: MAX_STEPS at t=0.1" in msg
    assert "sample 1: MAX_STEPS" in msg and "sample 2" not in msg and "throw=False" in msg
    assert info.value.solution.status.tolist() == [2, 2, 0]


def test_throw_names_underflow_cause():
    with pytest.raises(ode.SolveError, match=r"sample 0: (DT_UNDERFLOW|NONFINITE) at t=1"):
        ode.solve(lambda t, y: y * y, torch.ones(1, 1, dtype=D), (0.0, 2.0))


def test_dt_min_is_a_failure_threshold():
    sol = ode.solve(lambda t, y: -50.0 * y, torch.ones(1, 1, dtype=D), (0.0, 1.0),
                    dt_min=0.5, first_step=0.5, throw=False)
    assert sol.status.tolist() == [3]


# ---------------------------------------------------------------------------- bad input


def f0(t, y):
    return -y


Y = torch.ones(2, 1, dtype=D)


@pytest.mark.parametrize("kwargs,exc,pattern", [
    ({"y0": torch.ones(3, dtype=D)}, ValueError, r"batch-first"),
    ({"y0": torch.ones(2, 1, dtype=torch.int64)}, TypeError, r"floating dtype"),
    ({"y0": [[1.0]]}, TypeError, r"torch.Tensor"),
    ({"y0": torch.tensor([[1.0], [math.nan]], dtype=D)}, ValueError, r"not finite.*\[1\]"),
    ({"t_span": (0.0,)}, ValueError, r"pair"),
    ({"t_span": (0.0, torch.ones(3, dtype=D))}, ValueError, r"t1.*\(batch,\) = \(2,\)"),
    ({"t_span": (0.0, torch.ones(2, device="meta"))}, ValueError, r"device meta"),
    ({"t_span": (0.0, math.inf)}, ValueError, r"finite"),
    ({"t_span": (0.0, "1")}, TypeError, r"float or a tensor"),
    ({"t_eval": torch.ones(2, 2, 2, dtype=D)}, ValueError, r"t_eval must have shape"),
    ({"t_eval": torch.ones(3, 4, dtype=D)}, ValueError, r"t_eval must have shape"),
    ({"t_eval": torch.tensor([0.0, 2.0], dtype=D)}, ValueError, r"outside t_span"),
    ({"t_eval": torch.tensor([0.5, 0.2], dtype=D)}, ValueError, r"monotone"),
    ({"rtol": -1.0}, ValueError, r"rtol must be finite and >= 0"),
    ({"rtol": 0.0, "atol": 0.0}, ValueError, r"both zero"),
    ({"atol": torch.ones(2, 1, dtype=D)}, ValueError, r"per component"),
    ({"atol": torch.ones(5, dtype=D)}, ValueError, r"must broadcast to one sample's state"),
    ({"method": "rk45"}, ValueError, r"unknown method 'rk45'"),
    ({"method": "rk4"}, ValueError, r"fixed-step: pass dt="),
    ({"method": "rk4", "dt": 0.0}, ValueError, r"dt must be > 0"),
    ({"method": "euler", "dt": torch.ones(3, dtype=D)}, ValueError, r"dt must be a scalar"),
    ({"controller": "pid"}, ValueError, r"controller must be"),
    ({"max_steps": 0}, ValueError, r"max_steps"),
    ({"dt_min": -1.0}, ValueError, r"dt_min"),
    ({"dt_min": math.inf}, ValueError, r"dt_min = inf overflows"),
    ({"dt_max": 0.0}, ValueError, r"dt_max"),
    ({"first_step": -0.1}, ValueError, r"first_step must be > 0"),
    ({"args": torch.ones(3)}, ValueError, r"leading batch dimension 2"),
    ({"event": 3}, TypeError, r"event must be"),
    ({"f": lambda t, y: y[:, :0]}, ValueError, r"shape of y"),
    ({"f": lambda t, y: y.float()}, TypeError, r"dtype"),
    ({"event": lambda t, y: y}, ValueError, r"event fn\(t, y\) must return shape \(batch,\)"),
    # non-tensor values name their type (they raised AttributeError with grad enabled, or
    # printed a shape that matched)
    ({"event": lambda t, y: 0.5}, TypeError, r"event fn.*torch.Tensor.*got builtins.float"),
    ({"event": lambda t, y: y[:, 0].numpy()}, TypeError, r"got numpy.ndarray"),
    ({"f": lambda t, y: (-y).numpy()}, TypeError, r"f\(t, y\) must return a torch.Tensor.*"
                                                  r"got numpy.ndarray"),
    ({"y0": Y.half(), "t_span": (0.0, torch.tensor(1e5))}, ValueError,
     r"t1\) overflows y0's dtype torch.float16"),
])
def test_bad_input_raises_clear_errors(kwargs, exc, pattern):
    call = {"f": f0, "y0": Y, "t_span": (0.0, 1.0)}
    call.update(kwargs)
    f, y0, span = call.pop("f"), call.pop("y0"), call.pop("t_span")
    with pytest.raises(exc, match=pattern):
        ode.solve(f, y0, span, **call)


def test_bad_event_and_controller_config():
    with pytest.raises(ValueError, match="direction"):
        ode.Event(f0, direction=2)
    with pytest.raises(TypeError, match="callable"):
        ode.Event(3)
    with pytest.raises(ValueError, match="factor_min"):
        ode.IController(factor_min=2.0)
    with pytest.raises(ValueError, match="dense_output=True"):
        ode.solve(f0, Y, (0.0, 1.0)).interpolate(0.5)


def test_tiny_rtol_is_clipped_with_a_warning():
    with pytest.warns(UserWarning, match="below 4\\*eps"):
        sol = ode.solve(f0, Y.float(), (0.0, 1.0), rtol=1e-9, atol=1e-9)
    assert sol.y[0, 0].item() == pytest.approx(math.exp(-1.0), rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ode.solve(f0, Y.float(), (0.0, 1.0), rtol=1e-6)  # the benchmark setting: no warning


def test_adjoint_dispatch():
    try:
        from solvers.ode.adjoint import solve_adjoint  # noqa: F401
    except ImportError:
        with pytest.raises(NotImplementedError, match="adjoint.py"):
            ode.solve(f0, Y, (0.0, 1.0), adjoint=True)
        return
    y0 = Y.clone().requires_grad_()
    sol = ode.solve(f0, y0, (0.0, 1.0), adjoint=True, rtol=1e-9, atol=1e-11)
    (g,) = torch.autograd.grad(sol.y.sum(), y0)
    torch.testing.assert_close(g, torch.full_like(g, math.exp(-1.0)), rtol=1e-6, atol=1e-8)


def test_numpy_scalars_in_t_span_give_the_float_result_without_warnings():
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warned "overflow encountered in cast"
        a = ode.solve(f0, Y, (np.float32(0.0), np.float32(1.0)))
    b = ode.solve(f0, Y, (0.0, 1.0))
    assert torch.equal(a.y, b.y) and torch.equal(a.stats["n_steps"], b.stats["n_steps"])
