"""Per-sample early exit with batch compaction: same answers as one sample at a time."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from odedepth.models import create_model, early_exit
from odedepth.stopping import Entropy, FixedDepth, MaxProbability, Patience

SMALL = dict(channels=(4, 8, 8, 16), num_classes=5)


def _model(name="resnet18", **kw):
    torch.manual_seed(0)
    opts = dict(SMALL)
    opts.update(kw)
    model = create_model(name, **opts).eval()
    # Spread the exits' confidences so that a threshold separates samples at several depths.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(20.0)
    return model


def _between(values, q):
    """A threshold strictly between two observed values (no ties decided by rounding)."""
    v = values.flatten().unique().sort().values
    k = min(max(int(q * (len(v) - 1)), 0), len(v) - 2)
    return float((v[k] + v[k + 1]) / 2)


def _threshold(model, x, q=0.5):
    with torch.no_grad():
        _, traj = model(x)
    return _between(traj.outputs.softmax(-1).amax(-1), q)


def _alone(model, x, rule):
    outs, idx = [], []
    for i in range(x.shape[0]):
        o, k = model.forward_early_exit(x[i:i + 1], rule)
        outs.append(o)
        idx.append(k)
    return torch.cat(outs), torch.cat(idx)


@pytest.mark.parametrize("exits", ["shared", "per_block"])
def test_batch_equals_alone_and_the_offline_rule(exits):
    model = _model(exits=exits)
    x = torch.randn(12, 3, 32, 32)
    rule = MaxProbability(_threshold(model, x))
    with torch.no_grad():
        logits, index = early_exit(model, x, rule)
        ref_logits, ref_index = _alone(model, x, rule)
        _, traj = model(x)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    # The shared StoppingRule applied offline to the full trajectory gives the same stops.
    assert torch.equal(index, rule.stop_index(traj))
    torch.testing.assert_close(logits, traj.outputs_at(index), rtol=1e-5, atol=1e-5)
    assert len(set(index.tolist())) > 1  # the test exercises several exit depths


def test_compaction_runs_later_blocks_on_fewer_samples():
    model = _model(exits="shared")
    x = torch.randn(16, 3, 32, 32)
    rule = MaxProbability(_threshold(model, x, 0.3))
    sizes = []
    for blocks in model.stage_blocks():
        for b in blocks:
            b.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    with torch.no_grad():
        _, index = early_exit(model, x, rule)
    # Block k (exit position k+1) sees exactly the samples that did not stop at positions <= k.
    expected = [int((index > k).sum()) for k in range(len(sizes))]
    assert sizes == expected[: len(sizes)]
    assert sizes[-1] < 16 if sizes else True
    assert sum(sizes) < 16 * model.n_blocks


@pytest.mark.parametrize("depth", [0, 3, 8])
def test_fixed_depth_equals_the_exit_head_there(depth):
    model = _model(exits="shared")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits, index = early_exit(model, x, FixedDepth(depth) if depth else FixedDepth(1e-9))
        _, traj = model(x)
    pos = model.exit_depths().index(depth)
    assert index.tolist() == [pos if depth else 1] * 5
    torch.testing.assert_close(logits, traj.outputs[:, pos if depth else 1], rtol=1e-5, atol=1e-5)


def test_gated_calibrated_and_vit_and_mlp_early_exit():
    x = torch.randn(10, 3, 32, 32)
    model = _model("resnet50", exits="per_block", gated=True)  # eval, all-on -> calibrated
    rule = MaxProbability(_threshold(model, x))
    with torch.no_grad():
        a, ia = early_exit(model, x, rule)
        b, ib = _alone(model, x, rule)
        full, traj = model(x)
    assert torch.equal(ia, ib) and torch.equal(ia, rule.stop_index(traj))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # A skip configuration: exits only at executed blocks, the last one is the model's head.
    model.configure("FTFT")
    with torch.no_grad():
        a, ia = early_exit(model, x, rule)
        b, ib = _alone(model, x, rule)
        full, traj = model(x)
    assert model.exit_depths() == [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15]
    torch.testing.assert_close(traj.outputs[:, -1], full)
    assert torch.equal(ia, ib) and torch.equal(ia, rule.stop_index(traj))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    vit = create_model("vit_tiny", img_size=32, embed_dim=32, num_heads=2, depth=4, gate_groups=2,
                       num_classes=5, exits="shared", gated=True).eval()
    with torch.no_grad():
        vit.head.weight.mul_(50)
        _, traj = vit(x)
    logp = traj.outputs.log_softmax(-1)
    rule = Entropy(_between(-(logp.exp() * logp).sum(-1), 0.5))
    with torch.no_grad():
        a, ia = early_exit(vit, x, rule)
        b, ib = _alone(vit, x, rule)
    assert torch.equal(ia, ib) and torch.equal(ia, rule.stop_index(traj))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@given(seed=st.integers(0, 10_000), batch=st.integers(1, 9), q=st.floats(0.05, 0.95))
def test_batch_independence_property(seed, batch, q):
    torch.manual_seed(seed)
    model = create_model("resmlp", dim=6, layers=[3, 3], in_chans=4, num_classes=3,
                         exits="shared", activation="tanh").eval()
    x = torch.randn(batch, 4)
    with torch.no_grad():
        _, traj = model(x)
        rule = MaxProbability(_between(traj.outputs.softmax(-1).amax(-1), q))
        out, idx = early_exit(model, x, rule)
        perm = torch.randperm(batch)
        out_p, idx_p = early_exit(model, x[perm], rule)
    assert torch.equal(idx, rule.stop_index(traj))
    assert torch.equal(idx_p, idx[perm])
    torch.testing.assert_close(out_p, out[perm])
    torch.testing.assert_close(out, traj.outputs_at(idx))


def test_early_exit_errors():
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="no exits"):
        early_exit(_model(), x, MaxProbability(0.5))
    model = _model(exits="shared")
    with pytest.raises(ValueError, match="history"):
        early_exit(model, x, Patience(2))
    with pytest.raises(TypeError, match="StoppingRule"):
        early_exit(model, x, 0.5)
    with pytest.raises(ValueError, match="empty batch"):
        early_exit(model, x[:0], MaxProbability(0.5))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        early_exit(model, torch.randn(2, 4, 32, 32), MaxProbability(0.5))
