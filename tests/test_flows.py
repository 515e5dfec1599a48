"""Flows: vector fields, time-dependent weights, ODEBlock over solvers.ode, SDEBlock.

Known answers: matrix exponentials (scipy), torchdiffeq run side by side (values and gradients),
torch's own pre-norm TransformerEncoderLayer, numpy's Legendre polynomials, the exact law of the
Euler--Maruyama scheme on a linear SDE.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torchdiffeq
from torch import nn

from odedepth.flows import (
    ContinuousDepthClassifier,
    ConvField,
    MLPField,
    ODEBlock,
    SDEBlock,
    TimeLinear,
    TransformerField,
    trajectory_from_solution,
)
from odedepth.stopping import FixedDepth

TIGHT = dict(method="dopri5", rtol=1e-10, atol=1e-12)


class LinearField(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = A

    def forward(self, t, h):
        return h @ self.A.T


def _A(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(d, d, dtype=torch.float64, generator=g)


# ------------------------------------------------------------------------- time weights
def test_hat_basis_puts_layer_i_at_node_i_and_is_a_partition_of_unity():
    layer = TimeLinear(3, 2, time="hat", n_basis=5, t1=2.0).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    for i, ti in enumerate(np.linspace(0, 2.0, 5)):
        t = torch.full((4,), ti, dtype=torch.float64)
        expected = x @ layer.weight[i] + layer.bias[i]
        assert torch.allclose(layer(t, x), expected, atol=1e-12)
    t = torch.rand(100, dtype=torch.float64) * 2
    assert torch.allclose(layer.basis(t).sum(1), torch.ones(100, dtype=torch.float64))
    # between nodes: linear interpolation of the two neighbouring layers
    t = torch.full((4,), 0.25, dtype=torch.float64)  # halfway between nodes 0 and 1
    mid = 0.5 * (x @ layer.weight[0] + layer.bias[0]) + 0.5 * (x @ layer.weight[1] + layer.bias[1])
    assert torch.allclose(layer(t, x), mid, atol=1e-12)


def test_legendre_basis_matches_numpy_and_stages_are_piecewise_constant():
    layer = TimeLinear(2, 2, time="legendre", n_basis=5, t1=3.0).double()
    t = torch.linspace(0, 3.0, 11, dtype=torch.float64)
    phi = layer.basis(t).numpy()
    x = 2 * t.numpy() / 3.0 - 1
    for k in range(5):
        coef = np.zeros(k + 1)
        coef[k] = 1
        assert np.allclose(phi[:, k], np.polynomial.legendre.legval(x, coef), atol=1e-12)
    st = TimeLinear(2, 2, time="stages", n_basis=4, t1=1.0).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    for k, tk in enumerate([0.1, 0.3, 0.6, 0.99]):
        out = st(torch.full((3,), tk, dtype=torch.float64), x)
        assert torch.allclose(out, x @ st.weight[k] + st.bias[k])
    # beyond the horizon the time is clamped (last stage)
    assert torch.allclose(st(torch.full((3,), 5.0, dtype=torch.float64), x),
                          x @ st.weight[3] + st.bias[3])


def test_transformer_field_euler_step_is_torch_prenorm_encoder_layer():
    torch.manual_seed(0)
    dim, heads = 8, 2
    field = TransformerField(dim, heads=heads, mlp_ratio=2.0).double().eval()
    ref = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=16, dropout=0.0,
                                     activation="gelu", batch_first=True,
                                     norm_first=True).double().eval()
    ref.self_attn.load_state_dict(field.attn.state_dict())
    ref.linear1.load_state_dict(field.mlp[0].state_dict())
    ref.linear2.load_state_dict(field.mlp[2].state_dict())
    ref.norm1.load_state_dict(field.norm1.state_dict())
    ref.norm2.load_state_dict(field.norm2.state_dict())
    h = torch.randn(3, 5, dim, dtype=torch.float64)
    with torch.no_grad():
        ours = h + field(torch.zeros(3, dtype=torch.float64), h)  # one Euler step, dt = 1
        theirs = ref(h)
    assert torch.allclose(ours, theirs, atol=1e-12)


def test_fields_are_per_sample_elementwise():
    torch.manual_seed(1)
    t = torch.rand(4)
    for field, shape in [(MLPField(6, 8, time="stages", n_basis=3), (4, 6)),
                         (ConvField(4, 8, groups=2), (4, 4, 5, 5)),
                         (TransformerField(8, heads=2), (4, 3, 8))]:
        field.eval()
        h = torch.randn(*shape)
        full = field(t, h)
        assert full.shape == h.shape
        for i in range(4):
            assert torch.allclose(field(t[i:i + 1], h[i:i + 1]), full[i:i + 1], atol=1e-5)


# ----------------------------------------------------------------------------- ODEBlock
def test_odeblock_linear_field_matches_matrix_exponential_at_checkpoints():
    A = _A()
    block = ODEBlock(LinearField(A), t1=1.5, **TIGHT)
    h0 = torch.randn(5, 4, dtype=torch.float64)
    te = torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64)
    sol = block.solve(h0, t_eval=te, count_checkpoint_nfe=True)
    for k, tk in enumerate(te.tolist()):
        expected = h0 @ torch.from_numpy(scipy.linalg.expm(A.numpy() * tk)).T
        assert torch.allclose(sol.hs[:, k], expected, atol=1e-9)
    assert torch.allclose(sol.h, sol.hs[:, -1], atol=1e-12)
    # cumulative NFE at the checkpoints: non-decreasing, ending at each sample's total
    assert (sol.checkpoint_nfe.diff(dim=1) >= 0).all()
    assert torch.equal(sol.checkpoint_nfe[:, -1].long(), sol.nfe)
    assert block.last_nfe == pytest.approx(sol.nfe.double().mean().item())


def test_odeblock_matches_torchdiffeq_values_and_gradients():
    torch.manual_seed(0)
    field = MLPField(4, 16, time="concat").double()
    block = ODEBlock(field, t1=1.0, **TIGHT)
    h0 = torch.randn(6, 4, dtype=torch.float64)
    ours = block(h0)
    g_ours = torch.autograd.grad(ours.pow(2).sum(), list(field.parameters()))

    def f_peer(t, h):
        return field(t.expand(h.shape[0]), h)

    peer = torchdiffeq.odeint(f_peer, h0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                              rtol=1e-10, atol=1e-12)[-1]
    g_peer = torch.autograd.grad(peer.pow(2).sum(), list(field.parameters()))
    assert torch.allclose(ours, peer, atol=1e-8)
    for a, b in zip(g_ours, g_peer):
        assert torch.allclose(a, b, atol=1e-7)


def test_odeblock_adjoint_gradients_match_torchdiffeq_adjoint():
    torch.manual_seed(1)
    field = MLPField(3, 8, time="hat", n_basis=3).double()
    block = ODEBlock(field, t1=1.0, adjoint=True, **TIGHT)
    h0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    params = [h0] + list(field.parameters())
    g_ours = torch.autograd.grad(block(h0).pow(2).sum(), params)

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            self.field = field

        def forward(self, t, h):
            return self.field(t.expand(h.shape[0]), h)

    span = torch.tensor([0.0, 1.0], dtype=torch.float64)
    peer = torchdiffeq.odeint_adjoint(Peer(), h0, span, rtol=1e-10, atol=1e-12)[-1]
    g_peer = torch.autograd.grad(peer.pow(2).sum(), params)
    # and the exact gradient: backprop through a still tighter direct solve
    exact = torchdiffeq.odeint(Peer(), h0, span, rtol=1e-12, atol=1e-14)[-1]
    g_exact = torch.autograd.grad(exact.pow(2).sum(), params)
    for a, b, c in zip(g_ours, g_peer, g_exact):  # gradients are O(1); errors ~1e-7 measured
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
        assert torch.allclose(a, c, rtol=0, atol=1e-6)


def test_odeblock_fixed_depth_event_and_per_sample_horizons():
    A = _A(3, seed=2)
    block = ODEBlock(LinearField(A), t1=2.0, **TIGHT)
    h0 = torch.randn(4, 3, dtype=torch.float64)
    sol = block.solve(h0, stop=FixedDepth(0.7))
    assert torch.allclose(sol.t, torch.full((4,), 0.7, dtype=torch.float64), atol=1e-9)
    expected = h0 @ torch.from_numpy(scipy.linalg.expm(A.numpy() * 0.7)).T
    assert torch.allclose(sol.h, expected, atol=1e-8)
    assert sol.halted.all()
    # per-sample horizons (end-time sampling)
    t1 = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    sol = block.solve(h0, t1=t1)
    for i in range(4):
        expected = h0[i] @ torch.from_numpy(scipy.linalg.expm(A.numpy() * float(t1[i]))).T
        assert torch.allclose(sol.h[i], expected, atol=1e-8)


def test_classifier_trajectory_and_prediction_agree():
    torch.manual_seed(0)
    model = ContinuousDepthClassifier(nn.Linear(5, 4).double(),
                                      ODEBlock(MLPField(4, 8).double(), t1=1.0, **TIGHT),
                                      nn.Linear(4, 3).double(), checkpoints=4)
    x = torch.randn(7, 5, dtype=torch.float64)
    logits, traj = model(x)
    assert traj.kind == "time" and traj.n_depths == 5
    assert torch.allclose(traj.depths, torch.linspace(0, 1, 5, dtype=torch.float64))
    assert torch.allclose(logits, model.predict(x).logits, atol=1e-9)
    assert torch.allclose(traj.outputs[:, 0], model.head(model.embed(x)), atol=1e-12)
    p = model.predict(x, FixedDepth(0.5))
    assert torch.allclose(p.logits, traj.outputs[:, 2], atol=1e-8)


def test_odeblock_bad_inputs():
    block = ODEBlock(MLPField(3, 4), t1=1.0)
    with pytest.raises(ValueError, match="horizon"):
        ODEBlock(MLPField(3, 4), t1=-1.0)
    with pytest.raises(ValueError, match="rtol"):
        ODEBlock(MLPField(3, 4), rtol=0.0)
    with pytest.raises(ValueError, match="NaN"):
        block(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="h0"):
        block(torch.ones(3))
    with pytest.raises(ValueError, match="t_eval"):
        block.solve(torch.ones(2, 3), t_eval=[0.5, 0.2])
    with pytest.raises(ValueError, match="t_eval"):
        block.solve(torch.ones(2, 3), t_eval=[0.0, 2.0])
    with pytest.raises(ValueError, match="state must have shape"):
        block(torch.ones(2, 5))
    with pytest.raises(ValueError, match="time must be one of"):
        MLPField(3, 4, time="sometimes")
    with pytest.raises(ValueError, match="unknown solver options"):
        block.solve(torch.ones(2, 3), tolerance=1e-3)
    with pytest.raises(ValueError, match="args"):
        block.solve(torch.ones(2, 3), args=(torch.ones(3),))
    with pytest.raises(TypeError, match="stop must be a StoppingRule"):
        block.solve(torch.ones(2, 3), stop=lambda t, h: h.sum(-1))


# ----------------------------------------------------------------------------- SDEBlock
def _em_moments(h0, mu, sigma, dt, n):
    """Exact mean and variance of Euler--Maruyama on dh = mu h dt + sigma dW after n steps."""
    a = 1 + mu * dt
    mean = h0 * a ** n
    var = sigma ** 2 * dt * sum(a ** (2 * k) for k in range(n))
    return mean, var


@pytest.mark.parametrize("backend", ["euler", "torchsde"])
def test_sdeblock_linear_sde_matches_exact_euler_maruyama_law(backend):
    mu, sigma, T, dt, n = -1.0, 0.5, 1.0, 0.05, 4000
    torch.manual_seed(0)
    block = SDEBlock(LinearField(torch.tensor([[mu]], dtype=torch.float64)), sigma=sigma,
                     t1=T, dt=dt, backend=backend)
    h0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    out = block(h0, generator=torch.Generator().manual_seed(1))[:, 0] \
        if backend == "euler" else block(h0)[:, 0]
    mean, var = _em_moments(2.0, mu, sigma, dt, round(T / dt))
    assert abs(out.mean().item() - mean) < 4 * math.sqrt(var / n)
    # variance of the sample variance of a Gaussian: 2 var^2 / (n - 1)
    assert abs(out.var().item() - var) < 4 * math.sqrt(2 * var ** 2 / (n - 1))


def test_sdeblock_per_sample_stopping_with_compaction():
    mu = -1.0
    block = SDEBlock(LinearField(torch.tensor([[mu]], dtype=torch.float64)), sigma=0.0, t1=1.0,
                     dt=0.1)

    class StopWhenSmall(FixedDepth):
        def score(self, depth, state, logits):
            return 1.0 - state[:, 0]  # stop once h <= 1

    h0 = torch.tensor([[4.0], [2.0], [1.05], [8.0]], dtype=torch.float64)
    sol = block.solve(h0, stop=StopWhenSmall(1.0))
    # noise-free Euler: h_k = h0 0.9^k; first k >= 1 with h_k <= 1
    for i, v in enumerate([4.0, 2.0, 1.05, 8.0]):
        k = next((k for k in range(1, 11) if v * 0.9 ** k <= 1.0), 10)
        assert sol.t[i].item() == pytest.approx(0.1 * k)
        assert sol.h[i, 0].item() == pytest.approx(v * 0.9 ** k)
        assert sol.halted[i].item() == (v * 0.9 ** k <= 1.0)


def test_sdeblock_bad_inputs():
    f = MLPField(2, 4)
    with pytest.raises(ValueError, match="sigma"):
        SDEBlock(f, sigma=-1.0)
    with pytest.raises(ValueError, match="backend"):
        SDEBlock(f, backend="heun")
    with pytest.raises(ValueError, match="dt"):
        SDEBlock(f, dt=0.0)
    with pytest.raises(ValueError, match="euler"):
        SDEBlock(f, backend="torchsde").solve(torch.ones(2, 2), stop=FixedDepth(0.5))
    with pytest.raises(ValueError, match="NaN"):
        SDEBlock(f).solve(torch.full((2, 2), float("nan")))
    with pytest.raises(TypeError, match="stop must be a StoppingRule"):
        SDEBlock(f).solve(torch.ones(2, 2), stop=lambda t, h: h.sum(-1))


def test_halted_trajectory_marks_checkpoints_after_the_stop_invalid():
    A = _A(3, seed=4)
    block = ODEBlock(LinearField(A), t1=1.0, **TIGHT)
    h0 = torch.randn(4, 3, dtype=torch.float64)
    te = torch.linspace(0, 1, 5, dtype=torch.float64)
    sol = block.solve(h0, t_eval=te, stop=FixedDepth(0.6), count_checkpoint_nfe=True)
    traj = trajectory_from_solution(sol, nn.Identity())
    assert traj.valid[:, :3].all() and not traj.valid[:, 3:].any()  # 0, .25, .5 <= 0.6 < .75
    for k in range(3):
        expected = h0 @ torch.from_numpy(scipy.linalg.expm(A.numpy() * float(te[k]))).T
        assert torch.allclose(traj.outputs[:, k], expected, atol=1e-9)
    assert torch.equal(FixedDepth(0.4).stop_index(traj), torch.full((4,), 2))
    # the cost column counts evaluations up to each checkpoint and stays within the total
    assert (traj.cost[:, :3] <= sol.nfe[:, None]).all()
