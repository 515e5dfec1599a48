"""Discrete <-> continuous depth: residual blocks with branch scale 1/L are RK steps on an ODE.

Peers: torchdiffeq's fixed-grid euler / midpoint / heun2 methods with the same step (identical
outputs, up to rounding), scipy DOP853 and torchdiffeq dopri8 at tight tolerances for h(1).
Known answers: observed convergence orders 1 (Euler) and 2 (midpoint, Heun) (REFERENCES.md).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torchdiffeq import odeint

from odedepth.bridge import (
    BasisField,
    ResidualBlock,
    convergence_study,
    solve_reference,
    to_continuous,
    to_discrete,
)
from odedepth.flows import MLPField


def _field(seed=0, dim=4, n_basis=3, scale=2.0):
    return BasisField(dim, n_basis, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64, scale=scale)


def _h0(seed=1, batch=5, dim=4):
    return torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheme,method", [("euler", "euler"), ("midpoint", "midpoint"),
                                           ("heun", "heun2")])
def test_blocks_equal_torchdiffeq_fixed_grid(scheme, method):
    f, h0, L = _field(), _h0(), 7
    net = to_discrete(f, L, scheme)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        peer = odeint(f, h0, t, method=method, options={"step_size": 1.0 / L})[-1]
        torch.testing.assert_close(net(h0), peer, rtol=1e-12, atol=1e-12)


def test_reference_matches_torchdiffeq_dopri8_and_scipy():
    f, h0 = _field(), _h0()
    ref = solve_reference(f, h0)
    torch.testing.assert_close(ref, solve_reference(f, h0, backend="scipy"), rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        peer = odeint(f, h0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="dopri8",
                      rtol=1e-12, atol=1e-12)[-1]
    torch.testing.assert_close(ref, peer, rtol=1e-9, atol=1e-9)


def test_convergence_orders():
    res = convergence_study(_field(), _h0(), [16, 32, 64, 128])
    assert res.orders["euler"] == pytest.approx(1.0, abs=0.1)
    assert res.orders["midpoint"] == pytest.approx(2.0, abs=0.1)
    assert res.orders["heun"] == pytest.approx(2.0, abs=0.1)
    # Errors decrease monotonically, and second-order blocks are better at every L here.
    for s, e in res.errors.items():
        assert all(a > b for a, b in zip(e, e[1:])), s
    assert all(m < e for m, e in zip(res.errors["midpoint"], res.errors["euler"]))


def test_snapshot_copies_weights_at_stage_times():
    f = _field()
    net = to_discrete(f, 4, "midpoint")
    blk = net.blocks[2]
    for branch, t in zip(blk.branches, [0.5, 0.625]):
        torch.testing.assert_close(branch.params["W"], f.weights(t)["W"])
    # Independent copies: editing a block leaves the field unchanged.
    with torch.no_grad():
        blk.branches[0].params["W"].add_(1.0)
    assert not torch.allclose(blk.branches[0].params["W"], f.weights(0.5)["W"])


@pytest.mark.parametrize("interpolation", ["constant", "linear"])
def test_round_trip_blocks_to_field_to_blocks(interpolation):
    torch.manual_seed(0)
    L, d = 6, 3
    branches = [nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, d)).double()
                for _ in range(L)]
    alpha = 0.3  # any branch scale: the field's gain absorbs alpha * L
    x = torch.randn(4, d, dtype=torch.float64)
    with torch.no_grad():
        h = x
        for b in branches:
            h = h + alpha * b(h)
        fld = to_continuous(branches, scale=alpha, interpolation=interpolation)
        back = to_discrete(fld, L, "euler")(x)
        torch.testing.assert_close(back, h, rtol=1e-13, atol=1e-13)
        # and via torchdiffeq's Euler on the interpolated field
        peer = odeint(fld, x, torch.tensor([0.0, 1.0], dtype=torch.float64), method="euler",
                      options={"step_size": 1.0 / L})[-1]
        torch.testing.assert_close(peer, h, rtol=1e-12, atol=1e-12)


def test_linear_interpolation_is_linear_in_t():
    L = 4
    branches = [nn.Linear(2, 2, bias=False).double() for _ in range(L)]
    fld = to_continuous(branches, interpolation="linear")
    p = fld.params_at(0.25 * 1 + 0.25 * 0.3)  # 30 % of the way from node 1 to node 2
    expected = 0.7 * branches[1].weight + 0.3 * branches[2].weight
    torch.testing.assert_close(p["weight"], expected)
    # Constant beyond the last node.
    torch.testing.assert_close(fld.params_at(0.99)["weight"], branches[3].weight)


def test_euler_blocks_round_trip_through_field():
    f, h0 = _field(), _h0()
    net = to_discrete(f, 5, "euler")
    with torch.no_grad():
        torch.testing.assert_close(to_discrete(to_continuous(net), 5)(h0), net(h0),
                                   rtol=1e-13, atol=1e-13)


@given(st.integers(1, 6), st.integers(0, 100))
def test_batch_independence(L, seed):
    f = _field(seed)
    net = to_discrete(f, L, "heun")
    h0 = _h0(seed + 1, batch=4)
    with torch.no_grad():
        full = net(h0)
        alone = torch.cat([net(h0[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, alone, rtol=1e-14, atol=1e-14)


def test_per_sample_times_in_fields():
    f = _field()
    h = _h0()
    t = torch.tensor([0.0, 0.5, 0.5, 1.0, 0.2], dtype=torch.float64)
    out = f(t, h)
    for i in range(5):
        torch.testing.assert_close(out[i], f(float(t[i]), h[i:i + 1])[0])


def test_flows_field_interop():
    torch.manual_seed(0)
    fld = MLPField(3, hidden=16, time="legendre").double()
    h0 = torch.randn(4, 3, dtype=torch.float64)
    res = convergence_study(fld, h0, [8, 16, 32])
    assert res.orders["euler"] == pytest.approx(1.0, abs=0.15)
    assert res.orders["heun"] == pytest.approx(2.0, abs=0.25)


def test_bad_input():
    f = _field()
    with pytest.raises(ValueError, match="scheme"):
        to_discrete(f, 3, "rk4")
    with pytest.raises(ValueError, match="positive int"):
        to_discrete(f, 0)
    with pytest.raises(TypeError, match="callable"):
        to_discrete(3.0, 2)
    with pytest.raises(ValueError, match="two distinct"):
        convergence_study(f, _h0(), [8])
    with pytest.raises(ValueError, match="finite"):
        convergence_study(f, torch.full((2, 4), math.nan, dtype=torch.float64), [2, 4])
    with pytest.raises(ValueError, match="identical architecture"):
        to_continuous([nn.Linear(2, 2), nn.Linear(2, 3)])
    with pytest.raises(ValueError, match="Euler"):
        to_continuous(to_discrete(f, 3, "midpoint"))
    with pytest.raises(ValueError, match="backend"):
        solve_reference(f, _h0(), backend="rk45")
    with pytest.raises(ValueError, match="needs 2"):
        ResidualBlock([nn.Identity()], 0.1, "heun")
    with pytest.raises(ValueError, match="dt"):
        ResidualBlock([nn.Identity()], -0.1, "euler")
