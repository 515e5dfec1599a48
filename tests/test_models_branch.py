"""Branch scaling, ReZero and calibration against closed forms on linear residual stacks."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from odedepth.models import create_model, resolve_branch_scale

LINEAR = dict(stem=False, num_classes=None, hidden=None, activation=None, bias=False, norm=False)


def _matrices(model):
    return [b.fc1.weight.detach() for st in model.stage_blocks() for b in st]


@pytest.mark.parametrize("scale,alpha", [("1/L", lambda L: 1 / L),
                                         ("1/sqrt(L)", lambda L: 1 / math.sqrt(L)),
                                         (0.3, lambda L: 0.3), (1, lambda L: 1.0)])
def test_linear_stack_is_the_exact_product(scale, alpha):
    torch.manual_seed(0)
    d, L = 5, 7
    model = create_model("resmlp", dim=d, layers=[L], branch_scale=scale, **LINEAR).double()
    x = torch.randn(4, d, dtype=torch.float64)
    a = alpha(L)
    # h_L = (I + a A_L) ... (I + a A_1) h_0 (Dherin & Munn, residual expansion of linear stacks)
    prod = torch.eye(d, dtype=torch.float64)
    for A in _matrices(model):
        prod = (torch.eye(d, dtype=torch.float64) + a * A) @ prod
    torch.testing.assert_close(model(x), x @ prod.T, rtol=1e-12, atol=1e-12)


def test_level_weights_of_the_expansion_with_one_over_L():
    # With A_k = A for all k the product is (I + A/L)^L, whose level-k weight is C(L,k)/L^k.
    torch.manual_seed(1)
    d, L = 3, 6
    model = create_model("resmlp", dim=d, layers=[L], branch_scale="1/L", **LINEAR).double()
    A = 0.5 * torch.randn(d, d, dtype=torch.float64)
    with torch.no_grad():
        for st in model.stage_blocks():
            for b in st:
                b.fc1.weight.copy_(A)
    expected = sum(math.comb(L, k) / L**k * torch.linalg.matrix_power(A, k) for k in range(L + 1))
    x = torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(model(x), x @ expected.T, rtol=1e-12, atol=1e-12)


def test_rezero_is_identity_at_init_and_learnable():
    torch.manual_seed(0)
    model = create_model("resmlp", dim=6, layers=[3], branch_scale="rezero", stem=False,
                         num_classes=None, hidden=12, activation="tanh")
    x = torch.randn(5, 6)
    torch.testing.assert_close(model(x), x, rtol=0, atol=0)
    gains = [n for n, _ in model.named_parameters() if n.endswith("branch_scale.gain")]
    assert len(gains) == 3
    model(x).pow(2).sum().backward()
    assert all(b.branch_scale.gain.grad is not None for st in model.stage_blocks() for b in st)
    # ResNet: identity blocks are the identity map at init (their input is a relu output).
    net = create_model("resnet18", branch_scale="rezero", channels=(4, 8, 8, 16)).eval()
    h = torch.rand(2, 4, 8, 8)
    torch.testing.assert_close(net.layer1[0](h), h, rtol=0, atol=0)
    # ViT: both branches start at zero
    vit = create_model("vit_tiny", img_size=32, embed_dim=16, num_heads=2, depth=2,
                       gate_groups=1, branch_scale="rezero")
    t = torch.randn(2, 5, 16)
    torch.testing.assert_close(vit.blocks[0](t), t, rtol=0, atol=0)


def test_resolve_branch_scale_values_and_errors():
    assert resolve_branch_scale("1/L", 16) == (1 / 16, False)
    assert resolve_branch_scale("1/sqrt(L)", 16) == (0.25, False)
    assert resolve_branch_scale("rezero", 16) == (0.0, True)
    vit = create_model("vit_tiny", img_size=32, depth=4, gate_groups=1, branch_scale="1/L")
    assert vit.blocks[0].attn_scale.value() == 1 / 8  # L = 2 branches per block
    for bad in ("1/M", "sqrt", ""):
        with pytest.raises(ValueError, match="branch_scale"):
            resolve_branch_scale(bad, 4)
    for bad in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive and finite"):
            resolve_branch_scale(bad, 4)
    with pytest.raises(TypeError):
        resolve_branch_scale(None, 4)


def test_calibrated_all_on_output_is_the_p_scaled_product():
    torch.manual_seed(2)
    d = 4
    probs = [0.8, 0.6]
    model = create_model("resmlp", dim=d, layers=[2, 2], gated=True, gate_probs=probs,
                         **LINEAR).double().eval()
    (A0, G0, A1, G1) = _matrices(model)
    eye = torch.eye(d, dtype=torch.float64)
    x = torch.randn(3, d, dtype=torch.float64)
    # Gated Depth calibration: h_s = h_b + p_s (G(h_b) - h_b) = (I + p_s G)(I + A) h for linear blocks
    calibrated = (eye + probs[1] * G1) @ (eye + A1) @ (eye + probs[0] * G0) @ (eye + A0)
    torch.testing.assert_close(model.configure("FF")(x), x @ calibrated.T, rtol=1e-12, atol=1e-12)
    # Partial configurations are not calibrated ...
    part = (eye + A1) @ (eye + probs[0] * G0) @ (eye + A0)
    assert not torch.allclose(model.configure("FT")(x), x @ part.T)
    torch.testing.assert_close(model.configure("FT")(x), x @ ((eye + A1) @ (eye + G0) @ (eye + A0)).T,
                               rtol=1e-12, atol=1e-12)
    base = (eye + A1) @ (eye + A0)
    torch.testing.assert_close(model.configure("TT")(x), x @ base.T, rtol=1e-12, atol=1e-12)
    # ... and neither is training mode.
    full = (eye + G1) @ (eye + A1) @ (eye + G0) @ (eye + A0)
    torch.testing.assert_close(model.train().configure("FF")(x), x @ full.T, rtol=1e-12, atol=1e-12)


def test_normalisation_free_resnet_has_no_batchnorm():
    net = create_model("resnet50", norm=False, branch_scale="1/sqrt(L)", channels=(4, 8, 8, 16))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net.layer1[0].branch_scale.value() == 0.25  # L = 16 blocks
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_drop_path_is_identity_in_eval_and_unbiased_in_training():
    torch.manual_seed(0)
    model = create_model("resmlp", dim=3, layers=[1], drop_path=0.5, **LINEAR).double()
    assert model.stage_blocks()[0][0].drop_path == 0.0  # linear rule: first block gets 0
    model = create_model("resmlp", dim=3, layers=[2], drop_path=0.5, **LINEAR).double()
    x = torch.ones(20000, 3, dtype=torch.float64)
    (A0, A1) = _matrices(model)
    eye = torch.eye(3, dtype=torch.float64)
    exact = x @ ((eye + A1) @ (eye + A0)).T
    torch.testing.assert_close(model.eval()(x), exact)
    # E[mask / keep] = 1: the training-mode mean matches eval within Monte-Carlo error.
    mean = model.train()(x).mean(0)
    h1 = x[0] @ (eye + A0).T
    sd = (A1 @ h1).abs() / math.sqrt(20000)  # Bernoulli(0.5)/0.5 has unit std
    assert ((mean - exact[0]).abs() <= 5 * sd + 1e-12).all()


@given(layers=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_any_configuration_is_the_product_of_its_executed_blocks(layers, data):
    """Eval-mode gated linear stack, any stage sizes and T/F string: the output is the ordered
    product of (I + A_k) over exactly the executed blocks (calibrated when all are on)."""
    config = data.draw(st.text(alphabet="TF", min_size=len(layers), max_size=len(layers)))
    torch.manual_seed(len(layers) * 10 + sum(layers))
    d = 3
    model = create_model("resmlp", dim=d, layers=layers, gated=True, **LINEAR).double().eval()
    model.configure(config)
    eye = torch.eye(d, dtype=torch.float64)
    prod = eye.clone()
    mats = iter(_matrices(model))
    all_on = "T" not in config
    for s, n in enumerate(layers):
        n_m = min(n - 1, math.ceil(n / 2))
        hb_prod = None
        for j in range(n):
            A = next(mats)
            if j >= n_m and config[s] == "T":
                continue
            if all_on and j == n_m:
                hb_prod = prod.clone()
            prod = (eye + A) @ prod
        if hb_prod is not None:
            p = float(model.gate_probs[s])
            prod = hb_prod + p * (prod - hb_prod)
    x = torch.randn(2, d, dtype=torch.float64)
    torch.testing.assert_close(model(x), x @ prod.T, rtol=1e-10, atol=1e-10)
