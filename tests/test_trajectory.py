"""DepthTrajectory and the confidence stopping rules, checked against hand-computed values."""

import math

import pytest
import torch

from odedepth import DepthTrajectory
from odedepth.stopping import Entropy, FixedDepth, MaxProbability, Patience


def _traj():
    # 2 samples, 3 depths, 2 classes; logits chosen so softmax max-probabilities are known.
    logits = torch.tensor([
        [[0.0, 0.0], [math.log(3.0), 0.0], [math.log(9.0), 0.0]],   # p_max: 0.5, 0.75, 0.9
        [[0.0, math.log(4.0)], [0.0, 0.0], [0.0, math.log(19.0)]],  # p_max: 0.8, 0.5, 0.95
    ])
    return DepthTrajectory(depths=torch.tensor([1.0, 2.0, 3.0]), outputs=logits)


def test_max_probability_stops_at_first_confident_depth():
    idx = MaxProbability(0.74).stop_index(_traj())
    assert idx.tolist() == [1, 0]
    idx = MaxProbability(0.92).stop_index(_traj())
    assert idx.tolist() == [2, 2]  # sample 0 never reaches 0.92: stops at its last depth


def test_entropy_rule_matches_closed_form():
    # binary entropy of p = 0.75 is 0.5623 nats; of 0.5 is ln 2 = 0.6931
    h75 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    idx = Entropy(h75 + 1e-6).stop_index(_traj())
    assert idx.tolist() == [1, 0]
    assert Entropy(math.log(2.0)).stop_index(_traj()).tolist() == [0, 0]


def test_fixed_depth_and_patience():
    assert FixedDepth(2.0).stop_index(_traj()).tolist() == [1, 1]
    # predictions: sample 0 -> 0,0,0 ; sample 1 -> 1,0,1
    assert Patience(1).stop_index(_traj()).tolist() == [1, 2]
    assert Patience(2).stop_index(_traj()).tolist() == [2, 2]


def test_selection_and_losses():
    tr = _traj()
    idx = torch.tensor([2, 0])
    assert torch.equal(tr.outputs_at(idx), torch.stack([tr.outputs[0, 2], tr.outputs[1, 0]]))
    assert tr.depths_at(idx).tolist() == [3.0, 1.0]
    losses = tr.losses(torch.tensor([0, 1]))
    assert losses[0, 2].item() == pytest.approx(-math.log(0.9), rel=1e-6)
    assert losses[1, 1].item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_valid_mask_limits_stop_index():
    tr = _traj()
    tr = DepthTrajectory(depths=tr.depths, outputs=tr.outputs,
                         valid=torch.tensor([[True, True, False], [True, True, True]]))
    assert MaxProbability(0.99).stop_index(tr).tolist() == [1, 2]
    assert math.isnan(tr.losses(torch.tensor([0, 0]))[0, 2].item())


@pytest.mark.parametrize("kwargs, match", [
    (dict(depths=torch.tensor([1.0, 2.0]), outputs=torch.zeros(2, 3, 2)), "depths must have shape"),
    (dict(depths=torch.tensor([3.0, 2.0, 1.0]), outputs=torch.zeros(2, 3, 2)), "non-decreasing"),
    (dict(depths=torch.tensor([1.0, float("nan"), 3.0]), outputs=torch.zeros(2, 3, 2)), "NaN"),
    (dict(depths=torch.tensor([1.0]), outputs=torch.zeros(4)), "outputs must be a tensor"),
    (dict(depths=torch.arange(3.0), outputs=torch.zeros(2, 3, 2), kind="layers"), "kind must be"),
    (dict(depths=torch.arange(3.0), outputs=torch.zeros(2, 3, 2), states=torch.zeros(3, 3)),
     "states must start"),
    (dict(depths=torch.arange(3.0), outputs=torch.zeros(2, 3, 2),
          cost=torch.tensor([3.0, 2.0, 1.0])), "cost is cumulative"),
    (dict(depths=torch.arange(3.0), outputs=torch.zeros(2, 3, 2),
          cost=torch.tensor([-1.0, 2.0, 3.0])), "cost must be finite and >= 0"),
    (dict(depths=torch.arange(3.0), outputs=torch.zeros(2, 3, 2),
          valid=torch.tensor([[True, False, True], [True, True, True]])), "found a gap"),
])
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DepthTrajectory(**kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: MaxProbability(1.5), "threshold"),
    (lambda: Entropy(-0.1), "threshold"),
    (lambda: FixedDepth(0.0), "horizon"),
    (lambda: Patience(0), "patience"),
])
def test_bad_rule_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_stop_index():
    with pytest.raises(ValueError, match="out of range"):
        _traj().outputs_at(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer tensor"):
        _traj().outputs_at(torch.tensor([0.0, 1.0]))
