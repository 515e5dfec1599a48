"""ViT family: timm layout and counts, ADN ViT split, skip-aware LayerNorm, MACs, exits."""

import itertools

import pytest
import torch

from odedepth.models import create_model

# timm's vit_{tiny,small,base}_patch16_224 (1000 classes); ViT-B/16 = torchvision vit_b_16's
# published 86,567,656 as well.
PUBLISHED = {"vit_tiny": 5_717_416, "vit_small": 22_050_664, "vit_base": 86_567_656}
DIMS = {"vit_tiny": 192, "vit_small": 384, "vit_base": 768}
TINY = dict(img_size=32, embed_dim=32, num_heads=2, num_classes=5)


def timm_layout(dim, depth=12, n_tokens=197, in_chans=3, patch=16, classes=1000):
    """Key -> shape of a timm ViT (pre-norm, qkv bias, [CLS] head), from the published layout."""
    out = {"cls_token": (1, 1, dim), "pos_embed": (1, n_tokens, dim),
           "patch_embed.proj.weight": (dim, in_chans, patch, patch),
           "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}"
        for n in ("norm1", "norm2"):
            out[f"{p}.{n}.weight"] = out[f"{p}.{n}.bias"] = (dim,)
        out[f"{p}.attn.qkv.weight"], out[f"{p}.attn.qkv.bias"] = (3 * dim, dim), (3 * dim,)
        out[f"{p}.attn.proj.weight"], out[f"{p}.attn.proj.bias"] = (dim, dim), (dim,)
        out[f"{p}.mlp.fc1.weight"], out[f"{p}.mlp.fc1.bias"] = (4 * dim, dim), (4 * dim,)
        out[f"{p}.mlp.fc2.weight"], out[f"{p}.mlp.fc2.bias"] = (dim, 4 * dim), (dim,)
    out["norm.weight"] = out["norm.bias"] = (dim,)
    out["head.weight"], out["head.bias"] = (classes, dim), (classes,)
    return out


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_and_layout_match_timm(name):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == timm_layout(DIMS[name])


def test_adn_vit_split_and_skip_norm_keys():
    model = create_model("vit_tiny", gated=True, img_size=32)
    assert model.mandatory_counts() == [2, 2, 2, 2]
    assert model.skippable_counts() == [1, 1, 1, 1]
    with_skip = {int(k.split(".")[1]) for k in model.state_dict() if "_skip." in k}
    assert with_skip == {0, 1, 3, 4, 6, 7, 9, 10}
    assert {k.split(".")[2] for k in model.state_dict() if "_skip." in k} == {"norm1_skip",
                                                                             "norm2_skip"}


def test_vit_base_macs_match_adn():
    # ADN README: ViT-b/16 17.58 GFLOPs full, 11.76 base (their counter adds norms/softmax).
    model = create_model("vit_base", gated=True)
    full = model.configure("FFFF").macs((3, 224, 224)) / 1e9
    base = model.configure("TTTT").macs((3, 224, 224)) / 1e9
    assert abs(full / 17.58 - 1) < 2e-3 and abs(base / 11.76 - 1) < 2e-3
    assert abs(model.configure("TTFF").macs((3, 224, 224)) / 1e9 / 14.67 - 1) < 2e-3


def test_configurations_run_the_right_blocks_and_norms_switch():
    torch.manual_seed(0)
    model = create_model("vit_tiny", depth=4, gate_groups=2, gated=True, **TINY).eval()
    calls = []
    for k, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    x = torch.randn(2, 3, 32, 32)
    outs = {}
    for cfg in map("".join, itertools.product("FT", repeat=2)):
        calls.clear()
        with torch.no_grad():
            outs[cfg] = model.configure(cfg)(x)
        assert calls == [k for k in range(4) if not (k % 2 == 1 and cfg[k // 2] == "T")]
    # skip-aware LayerNorm: change the skip copy of block 0 -> "TF" changes, "FT" does not.
    with torch.no_grad():
        model.blocks[0].norm1_skip.weight.mul_(3.0)
        assert torch.equal(model.configure("FT")(x), outs["FT"])
        assert not torch.allclose(model.configure("TF")(x), outs["TF"])
    with pytest.raises(ValueError, match="2 letters"):
        model.configure("TTTT")


def test_vit_exits_and_bad_input():
    torch.manual_seed(0)
    model = create_model("vit_tiny", depth=4, gate_groups=1, exits="per_block", **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, traj = model(x)
    assert traj.outputs.shape == (3, 4, 5) and traj.depths.tolist() == [1, 2, 3, 4]
    torch.testing.assert_close(traj.outputs[:, -1], logits)
    with torch.no_grad():
        h = model._forward_stem(x)
        h = model.blocks[1](model.blocks[0](h))
        torch.testing.assert_close(traj.outputs[:, 1], model.exits[1](h))
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="gate_groups"):
        create_model("vit_tiny", depth=6, gate_groups=4, **TINY)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_model("vit_tiny", img_size=40)
    with pytest.raises(ValueError, match="num_heads"):
        create_model("vit_tiny", embed_dim=30, num_heads=4, img_size=32)
    again = create_model(**model.config)
    assert set(again.state_dict()) == set(model.state_dict())
