"""Continuous objectives and regularisers against closed forms on linear flows.

On h' = -a h (h(t) = h0 e^{-a t}) and on h' = A h (Jacobian A everywhere) every running integral
has a closed form: kinetic energy, our depth regulariser, the Jacobian Frobenius norm (in
expectation over Hutchinson probes), the stage cost.
"""

import math

import pytest
import torch
from torch import nn

from odedepth import DepthTrajectory
from odedepth.flows import ODEBlock
from odedepth.losses import (
    FlowObjective,
    depth_weight,
    expected_stopped_loss,
    flow_objective,
    sample_end_time,
)
from odedepth.stopping import FixedDepth, MaxProbability

TIGHT = dict(method="dopri5", rtol=1e-10, atol=1e-12)


class Decay(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, t, h):
        return -self.a * h


class Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = A

    def forward(self, t, h):
        return h @ self.A.T


def _sum_loss(logits, y):
    return logits.sum(dim=1)  # l(t) = sum of the state's entries (head = identity)


@pytest.mark.parametrize("kind,kappa", [("exp", 1.0), ("linear", 0.0)])
def test_kinetic_and_depth_regulariser_closed_forms(kind, kappa):
    a, T = 1.5, 2.0
    h0 = torch.tensor([[1.0, -2.0], [0.5, 0.5]], dtype=torch.float64)
    block = ODEBlock(Decay(a), t1=T, **TIGHT)
    obj = FlowObjective(nn.Identity(), kinetic=1.0, depth_reg=1.0, depth_kind=kind, kappa=kappa,
                        loss_fn=_sum_loss, t1=T)
    v = flow_objective(block, h0, torch.zeros(2, dtype=torch.long), obj)
    m = h0.pow(2).mean(dim=1)  # mean over entries of h0^2
    # ||f||^2 / d = a^2 m e^{-2 a t}
    kin = a ** 2 * m * (1 - math.exp(-2 * a * T)) / (2 * a)
    assert torch.allclose(v.kinetic, kin, atol=1e-9)
    if kind == "exp":  # int e^{kappa t / T} a^2 m e^{-2at} dt
        r = kappa / T - 2 * a
        dep = a ** 2 * m * (math.exp(r * T) - 1) / r
    else:  # int (t / T) a^2 m e^{-2at} dt
        b = 2 * a
        dep = a ** 2 * m / T * (1 - math.exp(-b * T) * (1 + b * T)) / b ** 2
    assert torch.allclose(v.depth_reg, dep, atol=1e-9)
    # the total is l(T) + the weighted regularisers (no rule, no cost, no stage cost)
    ell_T = h0.sum(1) * math.exp(-a * T)
    assert torch.allclose(v.total, ell_T + kin + dep, atol=1e-9)


def test_jacobian_frobenius_hutchinson_is_unbiased():
    # f = A h: d f / d h = A, so int_0^T ||A||_F^2 / d dt = T ||A||_F^2 / d exactly in mean;
    # each probe eps gives T ||eps^T A||^2 / d.
    g = torch.Generator().manual_seed(0)
    d, T, n = 3, 0.5, 4000
    A = torch.randn(d, d, dtype=torch.float64, generator=g)
    block = ODEBlock(Linear(A), t1=T, **TIGHT)
    obj = FlowObjective(nn.Identity(), jacobian=1.0, loss_fn=_sum_loss, t1=T)
    h0 = torch.randn(n, d, dtype=torch.float64, generator=g)
    v = flow_objective(block, h0, torch.zeros(n, dtype=torch.long), obj,
                       generator=torch.Generator().manual_seed(1))
    exact = T * A.pow(2).sum().item() / d
    se = v.jacobian.std().item() / math.sqrt(n)
    assert abs(v.jacobian.mean().item() - exact) < 4 * se
    # and per probe, the integrand is constant: reproduce it with the same generator
    eps = torch.randn(h0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(v.jacobian, T * (eps @ A).pow(2).mean(1), atol=1e-9)


def test_jacobian_regulariser_gradient_reaches_field_parameters():
    torch.manual_seed(0)

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(2, 2, dtype=torch.float64))

        def forward(self, t, h):
            return torch.tanh(h @ self.W.T)

    field = Field()
    block = ODEBlock(field, t1=1.0, method="rk4", dt=0.1)
    obj = FlowObjective(nn.Identity(), jacobian=1.0, loss_fn=_sum_loss)
    h0 = torch.randn(3, 2, dtype=torch.float64)

    def value(W):
        with torch.no_grad():
            field.W.copy_(W)
        return flow_objective(block, h0, torch.zeros(3, dtype=torch.long), obj,
                              generator=torch.Generator().manual_seed(0)).jacobian.sum()

    W0 = field.W.detach().clone()
    g = torch.autograd.grad(value(W0), field.W)[0]
    eps = 1e-6
    for i in range(2):
        for j in range(2):
            Wp, Wm = W0.clone(), W0.clone()
            Wp[i, j] += eps
            Wm[i, j] -= eps
            fd = (value(Wp).item() - value(Wm).item()) / (2 * eps)
            assert abs(fd - g[i, j].item()) < 1e-6 * (1 + abs(fd))


def test_stage_cost_closed_form_and_end_time_sampling():
    a, T, gamma = 1.0, 1.0, 0.7
    block = ODEBlock(Decay(a), t1=T, **TIGHT)
    obj = FlowObjective(nn.Identity(), stage_weight=gamma, cost=0.2, loss_fn=_sum_loss)
    h0 = torch.tensor([[2.0]], dtype=torch.float64)
    v = flow_objective(block, h0, torch.zeros(1, dtype=torch.long), obj)
    stage = gamma * 2.0 * (1 - math.exp(-a * T))
    assert v.stage.item() == pytest.approx(stage, abs=1e-9)
    assert v.total.item() == pytest.approx(2.0 * math.exp(-a * T) + 0.2 * T + stage, abs=1e-9)
    # a time-dependent gamma(t) = t: int_0^T t * 2 e^{-t} dt = 2 (1 - e^{-T}(1 + T))
    obj_t = FlowObjective(nn.Identity(), stage_weight=lambda t: t, loss_fn=_sum_loss)
    v = flow_objective(block, h0, torch.zeros(1, dtype=torch.long), obj_t)
    assert v.stage.item() == pytest.approx(2 * (1 - math.exp(-T) * (1 + T)), abs=1e-9)
    # STEER: horizons uniform on [T - b, T + b]
    t1 = sample_end_time(1.0, 20000, 0.5, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    assert t1.min() >= 0.5 and t1.max() <= 1.5
    assert abs(t1.mean().item() - 1.0) < 4 * (1 / math.sqrt(12)) / math.sqrt(20000)
    v = flow_objective(block, h0.expand(3, 1), torch.zeros(3, dtype=torch.long), obj,
                       t1=torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    for i, Ti in enumerate([0.5, 1.0, 1.5]):
        st = gamma * 2.0 * (1 - math.exp(-Ti))
        assert v.total[i].item() == pytest.approx(2 * math.exp(-Ti) + 0.2 * Ti + st, abs=1e-9)


def test_expected_stopped_loss_discrete_form():
    # three depths, hand-computed: E[l_k + c d_k + gamma sum_{j<k} l_j (d_{j+1} - d_j)]
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.8, 0.2], [0.9, 0.1]]], dtype=torch.float64))
    traj = DepthTrajectory(depths=torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64),
                           outputs=logits)
    y = torch.zeros(1, dtype=torch.long)
    p = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
    c, g = 0.1, 0.5
    l = [-math.log(0.5), -math.log(0.8), -math.log(0.9)]
    stage = [0.0, g * l[0] * 1.0, g * (l[0] * 1.0 + l[1] * 2.0)]
    expected = sum(pk * (lk + c * dk + sk)
                   for pk, lk, dk, sk in zip([0.2, 0.3, 0.5], l, [1, 2, 4], stage))
    got = expected_stopped_loss(traj, y, p, c, stage_weight=g)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # a deterministic rule puts all the mass on its stop index
    got = expected_stopped_loss(traj, y, MaxProbability(0.75), c)
    assert got.item() == pytest.approx(l[1] + c * 2, abs=1e-12)
    got = expected_stopped_loss(traj, y, FixedDepth(4.0), c, reduction="sum")
    assert got.item() == pytest.approx(l[2] + c * 4, abs=1e-12)
    # with use_cost, the running cost is charged on the trajectory's cost column
    traj_c = DepthTrajectory(depths=traj.depths, outputs=logits,
                             cost=torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64))
    got = expected_stopped_loss(traj_c, y, FixedDepth(4.0), 0.01, use_cost=True)
    assert got.item() == pytest.approx(l[2] + 0.4, abs=1e-12)


def test_losses_bad_inputs():
    with pytest.raises(ValueError, match="kinetic"):
        FlowObjective(nn.Identity(), kinetic=-1.0)
    with pytest.raises(ValueError, match="stage_weight"):
        FlowObjective(nn.Identity(), stage_weight=float("nan"))
    with pytest.raises(TypeError, match="HazardRule"):
        FlowObjective(nn.Identity(), rule=MaxProbability(0.9))
    with pytest.raises(ValueError, match="depth_weight"):
        depth_weight(torch.zeros(1), "cubic")
    with pytest.raises(ValueError, match="t1"):  # was a silent NaN weight
        FlowObjective(nn.Identity(), depth_reg=1.0, t1=0.0)
    with pytest.raises(ValueError, match="kappa"):  # a decreasing weight is no regulariser
        FlowObjective(nn.Identity(), depth_reg=1.0, kappa=-2.0)
    with pytest.raises(TypeError, match="FlowObjective"):
        flow_objective(ODEBlock(Decay(1.0)), torch.ones(2, 1), torch.zeros(2), object())
    with pytest.raises(ValueError, match="target"):
        flow_objective(ODEBlock(Decay(1.0)), torch.ones(2, 1), torch.zeros(3),
                       FlowObjective(nn.Identity(), loss_fn=_sum_loss))
    with pytest.raises(ValueError, match="spread"):
        sample_end_time(1.0, 4, 1.0)
    with pytest.raises(ValueError, match="reduction"):
        traj = DepthTrajectory(depths=torch.arange(1.0, 3.0), outputs=torch.zeros(2, 2, 3))
        expected_stopped_loss(traj, torch.zeros(2, dtype=torch.long), FixedDepth(2.0),
                              reduction="max")
