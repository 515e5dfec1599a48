"""ODEBlock / SDEBlock review fixes: adjoint parameters reached through the objective, non-finite
stopping scores at t = 0, empty batches, stopping rules on adjoint blocks, SDE checkpoints.

Known answers: backpropagation through the solver (adjoint gradients must equal it), the
closed-form flow h(t) = exp(-t) h0 of dh/dt = -h, and solves of the same block with
adjoint=False.
"""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from odedepth.flows import ContinuousDepthClassifier, MLPField, ODEBlock, SDEBlock
from odedepth.losses import FlowObjective, flow_objective
from odedepth.stopping import EventBoundaryRule, MaxProbability, RuleFeatures

TIGHT = dict(rtol=1e-9, atol=1e-11)


class Gamma(nn.Module):
    """A learnable stage weight gamma(t) = softplus(w) (1 + t)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, t):
        return F.softplus(self.w) * (1 + t)


class TemperedCE(nn.Module):
    """A loss_fn with a learnable temperature."""

    def __init__(self):
        super().__init__()
        self.log_temp = nn.Parameter(torch.tensor(0.2, dtype=torch.float64))

    def forward(self, logits, y):
        return F.cross_entropy(logits * self.log_temp.exp(), y, reduction="none")


def _objective_grads(adjoint, make_objective):
    torch.manual_seed(0)
    field = MLPField(3, 8).double()
    head = nn.Linear(3, 4).double()
    gam, lf = Gamma(), TemperedCE()
    obj = make_objective(head, gam, lf)
    h0 = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    block = ODEBlock(field, adjoint=adjoint, **TIGHT)
    loss = flow_objective(block, h0, y, obj).total.sum()
    params = [gam.w, lf.log_temp, *field.parameters(), *head.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), grads


@pytest.mark.parametrize("how", ["modules", "closure", "bound_method"])
def test_adjoint_differentiates_stage_weight_and_loss_fn_modules_like_backprop(how):
    """dJ/dgamma.w and dJ/dloss_fn.log_temp by the adjoint equal backpropagation through the
    solver (before the fix the adjoint returned None for both: they were not adjoint_params)."""
    def make(head, gam, lf):
        if how == "modules":
            return FlowObjective(head, stage_weight=gam, loss_fn=lf)
        if how == "closure":  # plain functions closing over the modules
            return FlowObjective(head, stage_weight=lambda t: gam(t),
                                 loss_fn=lambda z, y: lf(z, y))
        return FlowObjective(head, stage_weight=gam.forward, loss_fn=lf.forward)

    loss_bp, g_bp = _objective_grads(False, make)
    loss_adj, g_adj = _objective_grads(True, make)
    assert torch.allclose(loss_bp, loss_adj, rtol=1e-10)
    assert g_bp[0] is not None and abs(float(g_bp[0])) > 1.0  # gamma matters (about 5.1)
    for gb, ga in zip(g_bp, g_adj):
        assert ga is not None
        assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-8), (ga, gb)


def test_nan_stopping_score_at_t0_raises_naming_samples():
    torch.manual_seed(0)
    block, head = ODEBlock(MLPField(3, 8)), nn.Linear(3, 4)
    rule = EventBoundaryRule(RuleFeatures("confidence"), init_stop=0.5)
    h0 = torch.randn(4, 3)
    ok = block.solve(h0, stop=rule, head=head)
    assert (ok.t > 0).all()
    with torch.no_grad():
        rule.net[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"EventBoundaryRule at t=0 is not finite.*4 of 4 "
                                         r"samples \(indices 0, 1, 2, 3\)"):
        block.solve(h0, stop=rule, head=head)


def test_nonfinite_score_for_some_samples_names_them():
    class Score:  # a memoryless rule whose score is NaN for sample 1 and +inf for sample 3
        memoryless = True

        def score(self, t, h, logits):
            s = torch.full_like(t, -1.0)
            if bool((t == 0).all()):
                s[1], s[3] = float("nan"), float("inf")
            return s

    with pytest.raises(ValueError, match=r"2 of 5 samples \(indices 1, 3\)"):
        ODEBlock(MLPField(2, 4)).solve(torch.randn(5, 2), stop=Score())


def test_empty_batch_gives_empty_solution_of_the_right_shapes():
    block = ODEBlock(MLPField(3, 8))
    h = block(torch.randn(0, 3))
    assert isinstance(h, torch.Tensor) and h.shape == (0, 3)
    head = nn.Linear(3, 4)
    sol = block.solve(torch.randn(0, 3), t_eval=[0.0, 0.5, 1.0], stop=MaxProbability(0.9),
                      head=head, count_checkpoint_nfe=True)
    assert sol.h.shape == (0, 3) and sol.t.shape == (0,) and sol.halted.shape == (0,)
    assert sol.halted.dtype == torch.bool and sol.nfe.shape == (0,) and sol.status.shape == (0,)
    assert sol.hs.shape == (0, 3, 3) and sol.checkpoint_nfe.shape == (0, 3)
    assert set(sol.stats) == {"nfe", "n_steps", "n_accepted", "n_rejected", "event_mask"}
    # with augmented channels: (0, n_aug)
    obj = FlowObjective(head, stage_weight=0.5)
    sol = block.solve(torch.randn(0, 3), aug=obj, args=(torch.zeros(0, dtype=torch.long),
                                                        torch.zeros(0, 1)))
    assert sol.aug.shape == (0, 1)
    # and the same solve on one sample still works (closed form below)
    lin = ODEBlock(_Decay(), **TIGHT)
    h0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    assert torch.allclose(lin(h0), h0 * math.exp(-1.0), rtol=1e-8)
    assert lin(h0[:0]).shape == (0, 2)


class _Decay(nn.Module):
    def forward(self, t, h):
        return -h


def test_adjoint_block_halts_like_backprop_block_under_no_grad():
    """predict() with a stopping rule works on an adjoint block (it used to raise
    NotImplementedError) and gives the same tau, logits and nfe as adjoint=False."""
    torch.manual_seed(0)
    embed, field, head = nn.Linear(5, 3), MLPField(3, 8), nn.Linear(3, 4)
    x = torch.randn(6, 5)
    rule = MaxProbability(0.36)  # samples 0 and 5 reach it near t = 0.8, sample 2 starts above
    out = {}
    for adj in (False, True):
        model = ContinuousDepthClassifier(embed, ODEBlock(field, adjoint=adj), head)
        with torch.no_grad():
            out[adj] = model.predict(x, rule)
    mid = out[False].halted & (out[False].tau > 0)
    assert mid.sum() >= 2 and (out[False].tau[mid] < 1).all()
    assert torch.equal(out[True].tau, out[False].tau)
    assert torch.equal(out[True].logits, out[False].logits)
    assert torch.equal(out[True].nfe, out[False].nfe)


def test_adjoint_block_with_stopping_rule_backpropagates_through_the_solver():
    """With grad on, a halting solve on an adjoint block gives backpropagation's gradients
    (also through the event times), equal to those of the adjoint=False block."""
    torch.manual_seed(0)
    embed, field, head = nn.Linear(5, 3), MLPField(3, 8), nn.Linear(3, 4)
    field, head = field.double(), head.double()
    h0 = embed(torch.randn(6, 5)).detach().double()
    rule = MaxProbability(0.36)
    grads = {}
    for adj in (False, True):
        sol = ODEBlock(field, adjoint=adj, **TIGHT).solve(h0, stop=rule, head=head)
        assert (sol.halted & (sol.t > 0) & (sol.t < 1)).sum() >= 2
        loss = (head(sol.h).logsumexp(-1) + sol.t).sum()
        grads[adj] = torch.autograd.grad(loss, list(field.parameters()))
    for a, b in zip(grads[True], grads[False]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_sde_euler_backend_rejects_t_eval_clearly():
    block = SDEBlock(MLPField(2, 4), sigma=0.1, dt=0.1)
    with pytest.raises(ValueError, match="t_eval.*backend='torchsde'"):
        block.solve(torch.randn(3, 2), t_eval=[0.0, 0.5, 1.0])
