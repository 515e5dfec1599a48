"""ResNet family: torchvision layout and counts, ADN split, gates, skip-aware BN, exits."""

import itertools
import math

import pytest
import torch

from odedepth import checkpoint
from odedepth.models import adn_split, create_model, list_models, load_torchvision_state_dict
from odedepth.models.resnet import _pooled_projection
from odedepth.trajectory import DepthTrajectory

SMALL = dict(channels=(4, 8, 8, 16), num_classes=5)

# Published torchvision parameter counts (torchvision.models docs, "num_params").
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672,
                      "resnet50": 25_557_032, "resnet101": 44_549_160}
ARCH = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
        "resnet50": ("bottleneck", [3, 4, 6, 3]), "resnet101": ("bottleneck", [3, 4, 23, 3])}


def torchvision_layout(block, layers, num_classes=1000):
    """Key -> shape of a torchvision ResNet state_dict, written out from torchvision's layout
    rules (conv1/bn1 stem, layerN.i.convK/bnK, downsample.0/1 on the first block of a stage when
    the shape changes, fc), independently of odedepth's model code."""
    out = {}

    def conv(name, cout, cin, k):
        out[f"{name}.weight"] = (cout, cin, k, k)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.{p}"] = (c,)
        out[f"{name}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    expansion = 1 if block == "basic" else 4
    inplanes = 64
    for s, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
        for j in range(n):
            pre = f"layer{s + 1}.{j}"
            if block == "basic":
                conv(f"{pre}.conv1", planes, inplanes, 3)
                bn(f"{pre}.bn1", planes)
                conv(f"{pre}.conv2", planes, planes, 3)
                bn(f"{pre}.bn2", planes)
            else:
                conv(f"{pre}.conv1", planes, inplanes, 1)
                bn(f"{pre}.bn1", planes)
                conv(f"{pre}.conv2", planes, planes, 3)
                bn(f"{pre}.bn2", planes)
                conv(f"{pre}.conv3", planes * 4, planes, 1)
                bn(f"{pre}.bn3", planes * 4)
            if j == 0 and (s > 0 or inplanes != planes * expansion):
                conv(f"{pre}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{pre}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    out["fc.weight"] = (num_classes, 512 * expansion)
    out["fc.bias"] = (num_classes,)
    return out


def _n_params(layout):
    return sum(math.prod(s) for k, s in layout.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_and_layout_match_torchvision(name):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    layout = torchvision_layout(*ARCH[name])
    assert _n_params(layout) == TORCHVISION_PARAMS[name]  # the table itself is right
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == layout


def test_torchvision_state_dict_file_loads_strict(tmp_path):
    torch.manual_seed(0)
    layout = torchvision_layout("basic", [2, 2, 2, 2])
    sd = {k: (torch.tensor(7) if s == () else torch.randn(s)) for k, s in layout.items()}
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = sd[k].abs() + 0.5
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(sd, path)
    model = create_model("resnet18")
    missing, unexpected = checkpoint.load_state_dict(model, path, strict=True)
    assert missing == [] and unexpected == []
    assert torch.equal(model.layer3[0].downsample[0].weight, sd["layer3.0.downsample.0.weight"])
    # Also through plain torch: strict=True must accept the file as is.
    create_model("resnet18").load_state_dict(torch.load(path), strict=True)
    # A gated model with skip-aware BN and exits: the helper fills the extra keys.
    gated = create_model("resnet18", gated=True, exits="per_block", branch_scale="rezero")
    left = load_torchvision_state_dict(gated, path)
    assert left and all(k.startswith("exits.") for k in left)
    assert torch.equal(gated.layer1[0].bn1_skip.running_var, sd["layer1.0.bn1.running_var"])
    assert gated.layer2[1].branch_scale.value() == 1.0
    # Same function as the plain model in the all-off gate configuration with calibration off.
    plain = create_model("resnet18")
    plain.load_state_dict(sd)
    gated.calibrate = False
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gated.eval()(x)[0], plain.eval()(x))


# ---------------------------------------------------------------------- ADN split and gates
@pytest.mark.parametrize("name,mandatory,skippable", [
    ("resnet18", [1, 1, 1, 1], [1, 1, 1, 1]),
    ("resnet34", [2, 2, 3, 2], [1, 2, 3, 1]),
    ("resnet50", [2, 2, 3, 2], [1, 2, 3, 1]),   # seeds_spec §3.1
    ("resnet101", [2, 2, 12, 2], [1, 2, 11, 1]),
])
def test_adn_split(name, mandatory, skippable):
    model = create_model(name, gated=True, channels=(2, 2, 2, 2))
    assert model.mandatory_counts() == mandatory
    assert model.skippable_counts() == skippable
    assert [adn_split(n) for n in ARCH[name][1]] == mandatory


def test_skip_norm_keys_only_in_mandatory_blocks():
    model = create_model("resnet50", gated=True)
    skip_blocks = {k.rsplit(".", 2)[0] for k in model.state_dict() if "_skip." in k}
    expected = {f"layer{s + 1}.{j}" for s, m in enumerate([2, 2, 3, 2]) for j in range(m)}
    assert skip_blocks == expected
    # Every other key is exactly the torchvision layout.
    plain = {k for k in model.state_dict() if "_skip." not in k}
    assert plain == set(torchvision_layout(*ARCH["resnet50"]))
    # Skip copies mirror bn1..bn3 of each mandatory bottleneck (5 entries per BN).
    assert sum("_skip." in k for k in model.state_dict()) == 9 * 3 * 5


def test_all_configurations_run_and_base_runs_exactly_mandatory_blocks():
    model = create_model("resnet50", gated=True, **SMALL).eval()
    calls = []
    for s, blocks in enumerate(model.stage_blocks()):
        for j, b in enumerate(blocks):
            b.register_forward_hook(lambda m, i, o, s=s, j=j: calls.append((s, j)))
    x = torch.randn(2, 3, 32, 32)
    outs = {}
    for flags in itertools.product("FT", repeat=4):
        cfg = "".join(flags)
        calls.clear()
        with torch.no_grad():
            outs[cfg] = model.configure(cfg)(x)
        assert outs[cfg].shape == (2, 5) and torch.isfinite(outs[cfg]).all()
        expected = [(s, j) for s, n in enumerate([3, 4, 6, 3]) for j in range(n)
                    if cfg[s] == "F" or j < [2, 2, 3, 2][s]]
        assert calls == expected
    assert len(outs) == 16
    assert model.configure("TTTT").configuration == "TTTT"


def test_analytic_macs_match_published_resnet50():
    # REFERENCES.md / seeds_spec §3.9: 4.089 G full, 2.561 G ADN base, 218.4 M per bottleneck.
    model = create_model("resnet50", gated=True)
    full = model.configure("FFFF").macs((1, 3, 224, 224))
    base = model.configure("TTTT").macs((1, 3, 224, 224))
    assert round(full / 1e9, 3) == 4.089
    assert round(base / 1e9, 3) == 2.561
    assert round(model.layer1[1].macs((256, 56, 56))[0] / 1e6, 1) == 218.4
    # all 16 configurations of seeds_spec §3.9 (G MACs, 3 decimals)
    table = {"FFFT": 3.871, "FFTF": 3.434, "FTTF": 2.997, "TTTF": 2.779, "TFTT": 2.997}
    for cfg, g in table.items():
        assert round(model.configure(cfg).macs((3, 224, 224)) / 1e9, 3) == g


def test_gate_sampling_frequencies_and_validation():
    model = create_model("resnet18", gated=True, **SMALL)
    torch.testing.assert_close(model.gate_probs,
                               torch.tensor([0.9, 0.9 - 0.4 / 3, 0.5 + 0.4 / 3, 0.5],
                                            dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([model.sample_gates(gen) for _ in range(4000)]).double()
    # Bernoulli(p_s): 4000 draws, standard error <= 0.008; allow 4 sigma.
    assert (draws.mean(0) - model.gate_probs).abs().max() < 0.032
    assert model.configuration == "".join("F" if g else "T" for g in draws[-1].bool())
    model.set_gates([True, False, True, False])
    assert model.configuration == "FTFT"
    with pytest.raises(ValueError, match="4 letters T/F"):
        model.configure("TTT")
    with pytest.raises(ValueError, match="4 letters T/F"):
        model.configure("TTXT")
    with pytest.raises(ValueError, match="gated=False"):
        create_model("resnet18", **SMALL).configure("TTTT")
    with pytest.raises(ValueError, match="gate_probs"):
        create_model("resnet18", gated=True, gate_probs=[0.5, 1.2, 0.5, 0.5], **SMALL)


def test_skip_aware_bn_switches_and_updates_only_its_set():
    torch.manual_seed(0)
    model = create_model("resnet50", gated=True, calibrate=False, **SMALL)
    blk = model.layer1[0]
    with torch.no_grad():
        for bn in (blk.bn1_skip, blk.bn2_skip, blk.bn3_skip):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    blk.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    with torch.no_grad():
        model.configure("FFFF")(x)
        out_full, inp = seen["out"], seen["inp"]
        model.configure("TFFF")(x)
        out_skip = seen["out"]
    torch.testing.assert_close(seen["inp"], inp)  # same stem, same block input
    assert (out_full - out_skip).abs().max() > 1e-3

    def manual(bn1, bn2, bn3):
        r = torch.relu(bn1(blk.conv1(inp)))
        r = torch.relu(bn2(blk.conv2(r)))
        return torch.relu(bn3(blk.conv3(r)) + blk.downsample(inp))

    with torch.no_grad():
        torch.testing.assert_close(out_skip, manual(blk.bn1_skip, blk.bn2_skip, blk.bn3_skip))
        torch.testing.assert_close(out_full, manual(blk.bn1, blk.bn2, blk.bn3))

    # Training: BatchNorm running mean after one step from 0 is momentum * batch mean (0.1 m).
    model.train()
    captured = {}
    blk.bn1_skip.register_forward_hook(lambda m, i, o: captured.update(skip=i[0]))
    blk.bn1.register_forward_hook(lambda m, i, o: captured.update(plain=i[0]))
    plain0 = blk.bn1.running_mean.clone()
    with torch.no_grad():
        model.configure("TFFF")(x)
    assert "plain" not in captured
    torch.testing.assert_close(blk.bn1_skip.running_mean,
                               0.1 * captured["skip"].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(blk.bn1.running_mean, plain0)
    skip_after = blk.bn1_skip.running_mean.clone()
    with torch.no_grad():
        model.configure("FFFF")(x)
    torch.testing.assert_close(blk.bn1.running_mean, 0.1 * captured["plain"].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(blk.bn1_skip.running_mean, skip_after)


def test_calibration_is_the_p_scaled_interpolation():
    torch.manual_seed(1)
    model = create_model("resnet18", gated=True, **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    p = model.gate_probs.float()
    with torch.no_grad():
        h = model._forward_stem(x)
        for s, blocks in enumerate(model.stage_blocks()):
            hb = blocks[0](h)          # mandatory
            g = blocks[1](hb)          # skippable
            h = hb + p[s] * (g - hb)
        expected = model.fc(h.mean(dim=(2, 3)))
        torch.testing.assert_close(model.configure("FFFF")(x), expected)
        # not calibrated in training mode, nor when any stage skips
        model.calibrate = False
        uncal = model(x)
    assert (uncal - expected).abs().max() > 1e-4


# ---------------------------------------------------------------------- exits
@pytest.mark.parametrize("exits", ["shared", "per_block"])
def test_exit_trajectory_last_output_is_the_logits(exits):
    torch.manual_seed(0)
    model = create_model("resnet50", exits=exits, **SMALL).eval()
    plain = create_model("resnet50", **SMALL).eval()
    assert set(plain.state_dict()) <= set(model.state_dict())
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, traj = model(x)
        torch.testing.assert_close(logits, plain(x))
    assert isinstance(traj, DepthTrajectory) and traj.kind == "block"
    n = 17 if exits == "shared" else 16
    assert traj.outputs.shape == (3, n, 5)
    torch.testing.assert_close(traj.outputs[:, -1], logits)
    assert traj.depths.tolist() == list(range(17 - n, 17))
    assert (traj.cost.diff() > 0).all()
    assert float(traj.cost[-1]) == model.macs((3, 32, 32)) - 64 * 5  # minus the fc


def test_shared_exit_goes_through_later_projections():
    torch.manual_seed(0)
    model = create_model("resnet18", exits="shared", **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, traj = model(x)
        h = model._forward_stem(x)
        h = model.layer1(h)
        h = model.layer2[0](h)  # depth 3: after the first block of stage 2
        y = model.layer4[0].downsample(model.layer3[0].downsample(h))
        torch.testing.assert_close(traj.outputs[:, 3], model.fc(y.mean(dim=(2, 3))))


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_and_options():
    model = create_model("resnet18", **SMALL)
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="branch_scale"):
        create_model("resnet18", branch_scale="1/M")
    with pytest.raises(ValueError, match="positive"):
        create_model("resnet18", branch_scale=-1.0)
    with pytest.raises(TypeError, match="branch_scale"):
        create_model("resnet18", branch_scale=True)
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="exits"):
        create_model("resnet18", exits="every")
    assert {"resnet18", "resnet34", "resnet50", "resnet101"} <= set(list_models())


def test_cifar_stem_keeps_resolution_and_config_rebuilds():
    model = create_model("resnet18", stem="cifar", in_chans=1, **SMALL)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model._stem_macs((1, 32, 32))[1] == (4, 32, 32)
    again = create_model(**model.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 5)


def test_cost_trajectory_uses_multiply_adds_as_depths():
    model = create_model("resnet50", exits="shared", **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits, traj = model.forward_trajectory(x, kind="cost")
    assert traj.kind == "cost"
    torch.testing.assert_close(traj.depths, traj.cost)
    # cumulative MACs: stem 7x7/2 conv on 32x32 -> 16x16x4 outputs of 3*49 products each
    assert float(traj.cost[0]) == 4 * 16 * 16 * 3 * 49
    steps = traj.cost.diff()
    # layer1.1 and layer1.2 are identical bottlenecks on 8x8x16 maps: 16*4 + 4*4*9 + 4*16 per pixel
    assert float(steps[1]) == float(steps[2]) == 8 * 8 * (16 * 4 + 4 * 4 * 9 + 4 * 16)
    with pytest.raises(ValueError, match="kind"):
        model.forward_trajectory(x, kind="time")


def test_trajectory_dtypes_under_bfloat16_autocast():
    model = create_model("resnet50", exits="shared", **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, traj = model.forward_trajectory(x, kind="cost")
    assert logits.dtype == torch.bfloat16
    assert traj.cost.dtype == torch.float32
    assert float(traj.cost[-1]) == float(model.exit_costs(x.shape)[-1])


@pytest.mark.parametrize("norm", [True, False])
def test_pooled_shared_exit_equals_projecting_the_feature_map(norm):
    # In eval mode without autograd the shared exit pools first and projects the pooled vector
    # (1x1 strided convolutions + eval BN are per-pixel affine maps); compare with the direct
    # composition "downsample modules, then avgpool + fc" on odd spatial sizes.
    torch.manual_seed(0)
    model = create_model("resnet50", exits="shared", norm=norm, **SMALL)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 37, 45))  # running statistics away from (0, 1)
    model.eval()
    h = torch.rand(3, 16, 19, 23)
    for stage in (-1, 0, 1, 2):
        c = model._stage_out[stage] if stage >= 0 else 4
        hh = h[:, :c] if c <= 16 else torch.rand(3, c, 9, 11)
        direct = hh
        for ds in model._later_projections(stage):
            direct = ds(direct)
        direct = model.fc(direct.mean(dim=(2, 3)))
        with torch.no_grad():
            fast = model._shared_exit(hh, stage)
            assert _pooled_projection(hh, model._later_projections(stage)) is not None
        torch.testing.assert_close(fast, direct.detach(), rtol=1e-5, atol=1e-5)


def test_bad_structural_options_are_named():
    with pytest.raises(ValueError, match="block"):
        create_model("resnet18", block="wide")
    with pytest.raises(ValueError, match="layers"):
        create_model("resnet18", layers=[2, -1, 2, 2])
    with pytest.raises(ValueError, match="channels"):
        create_model("resnet18", channels=(4, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="in_chans"):
        create_model("resnet18", in_chans=2.5)
    with pytest.raises(ValueError, match="drop_path"):
        create_model("resnet18", drop_path=1.0)
    with pytest.raises(ValueError, match="split"):
        create_model("resnet50", gated=True, split=[1, 1, 7, 1])
    with pytest.raises(ValueError, match="shortcut-only"):
        create_model("resnet18", shortcut_only=[True, False, False, False])
    with pytest.raises(ValueError, match="gate_probs"):
        create_model("resnet18", gated=True, gate_probs=[0.5, 0.5])
    # a custom split and a scalar probability are accepted and recorded in the config
    m = create_model("resnet50", gated=True, split=[1, 1, 1, 1], gate_probs=0.7, **SMALL)
    assert m.skippable_counts() == [2, 3, 5, 2] and m.config["gate_probs"] == 0.7
    assert create_model(**m.config).skippable_counts() == [2, 3, 5, 2]
