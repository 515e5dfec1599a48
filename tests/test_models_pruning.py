"""Pruning blocks whose residual branch vanished: same function, smaller model, clean reload."""

import pytest
import torch

from odedepth import checkpoint
from odedepth.models import ShortcutOnly, branch_norms, create_model, prune_blocks


def test_mlp_deep_zero_blocks_are_removed():
    torch.manual_seed(0)
    model = create_model("resmlp", dim=6, layers=[6], in_chans=3, num_classes=4, hidden=8,
                         exits="per_block").eval()
    with torch.no_grad():
        for b in model.stage_blocks()[0][3:]:
            b.fc2.weight.zero_()
            b.fc2.bias.zero_()
    norms = branch_norms(model)[0]
    assert norms[3:] == [0.0, 0.0, 0.0] and min(norms[:3]) > 0
    pruned = prune_blocks(model, threshold=1e-6)
    assert pruned.config["layers"] == [3] and pruned.n_blocks == 3
    x = torch.randn(5, 3)
    with torch.no_grad():
        (a, ta), (b, tb) = model(x), pruned(x)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(tb.outputs[:, :2], ta.outputs[:, :2], rtol=0, atol=0)
    rebuilt = create_model(**pruned.config)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)


def test_resnet_zero_branches_prune_to_shortcuts(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", channels=(4, 8, 8, 16), num_classes=5, exits="shared")
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-trivial running statistics
    model.eval()
    with torch.no_grad():
        for blk in (model.layer3[0], model.layer4[1]):
            blk.bn2.weight.zero_()   # folded BN: branch output = beta = 0 exactly
            blk.bn2.bias.zero_()
    pruned = prune_blocks(model, threshold=1e-3)
    assert pruned.config["layers"] == [2, 2, 2, 1]
    assert pruned.config["shortcut_only"] == [False, False, True, False]
    assert isinstance(pruned.layer3[0], ShortcutOnly)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        (a, ta), (b, tb) = model(x), pruned(x)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    # every kept exit reads the same state (the pruned last block was the identity)
    torch.testing.assert_close(tb.outputs, ta.outputs[:, :8], rtol=1e-6, atol=1e-6)
    checkpoint.save_model(pruned, tmp_path / "pruned.pt")
    again = checkpoint.load_model(tmp_path / "pruned.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], a, rtol=1e-6, atol=1e-6)
    # threshold 0 removes nothing (relative norms are never below 0)
    assert prune_blocks(model, threshold=0.0).config["layers"] == [2, 2, 2, 2]


def test_vit_pruning_and_errors():
    torch.manual_seed(0)
    vit = create_model("vit_tiny", img_size=32, embed_dim=16, num_heads=2, depth=4,
                       gate_groups=2, num_classes=3).eval()
    with torch.no_grad():
        for lin in (vit.blocks[2].attn.proj, vit.blocks[2].mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    pruned = prune_blocks(vit, 1e-4)
    assert pruned.config["depth"] == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), vit(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="threshold"):
        prune_blocks(vit, 1.5)
    with pytest.raises(ValueError, match="gated"):
        prune_blocks(create_model("resmlp", layers=[2, 2], gated=True), 0.1)
    with pytest.raises(TypeError, match="unsupported"):
        prune_blocks(torch.nn.Linear(2, 2), 0.1)
