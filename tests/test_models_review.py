"""Regression tests for problems a second reader found in odedepth.models (session 3): each
failed before its fix."""

import pytest
import torch

from odedepth.models import create_model, prune_blocks


@pytest.mark.parametrize("branch_scale, alpha", [("1/L", 0.25), ("1/sqrt(L)", 0.5), (0.25, 0.25)])
def test_pruning_keeps_a_string_branch_scale_resolved_for_the_unpruned_depth(branch_scale,
                                                                             alpha):
    # A block whose branch is exactly 0 is pruned: the function must not change. "1/L" was
    # re-resolved for 3 blocks (alpha 1/3, logits off by 0.095), also when rebuilt from config.
    torch.manual_seed(0)
    m = create_model("resmlp", dim=4, layers=[4], num_classes=3, norm=False,
                     branch_scale=branch_scale).eval()
    blk = m.stage_blocks()[0][3]
    blk.fc1.weight.data.zero_()
    blk.fc1.bias.data.zero_()
    x = torch.randn(5, 4)
    p = prune_blocks(m, 1e-3).eval()
    assert sum(len(s) for s in p.stage_blocks()) == 3
    assert p.stage_blocks()[0][0].branch_scale.value() == alpha
    with torch.no_grad():
        assert torch.equal(m(x), p(x))
        rebuilt = create_model(**p.config).eval()
        rebuilt.load_state_dict(p.state_dict())
        assert torch.equal(rebuilt(x), p(x))


def test_empty_batch_gives_empty_outputs():
    # The executor returned the stem output for an empty input (ResNet: a shape error; ViT with
    # exits: a broken trajectory).
    r = create_model("resnet18", stem="cifar", channels=(4, 8, 8, 8), num_classes=5).eval()
    v = create_model("vit_tiny", img_size=32, embed_dim=24, num_heads=2, num_classes=4,
                     exits="shared").eval()
    with torch.no_grad():
        assert r(torch.randn(0, 3, 16, 16)).shape == (0, 5)
        logits, traj = v(torch.randn(0, 3, 32, 32))
    assert logits.shape == (0, 4)
    assert traj.outputs.shape[0] == 0 and traj.outputs.shape[-1] == 4


@pytest.mark.parametrize("name, kw", [
    ("vit_tiny", dict(img_size=32, embed_dim=24, num_heads=2, num_classes=4)),
    ("resmlp", dict(dim=4, layers=[3], num_classes=3)),
])
@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_drop_path_outside_zero_one_is_refused(name, kw, rate):
    # ResNet refused it; ViT and ResidualMLP accepted 1.0 and trained on NaN (0 keep prob).
    with pytest.raises(ValueError, match=r"drop_path must lie in \[0, 1\)"):
        create_model(name, drop_path=rate, **kw)


def test_set_gates_accepts_a_float_zero_one_tensor():
    # gate_gradient_moments hands grad_fn float 0/1 samples; set_gates refused 1.0 and 0.0.
    m = create_model("resnet18", stem="cifar", channels=(4, 8, 8, 8), num_classes=5, gated=True)
    m.set_gates(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    a = m.configuration
    m.set_gates([True, False, True, True])
    assert a == m.configuration  # the same configuration as the bools give
    with pytest.raises(ValueError, match="0/1"):
        m.set_gates(torch.tensor([1.0, 0.5, 1.0, 1.0]))
