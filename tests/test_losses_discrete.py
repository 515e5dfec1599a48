"""Discrete-depth objectives: gated depth, ADN distillation, stage cost, exits, DDP-synchronised gates.

Known answers: KL divergence against scipy.special.rel_entr; the ADN two-pass step against one
step on the combined loss; binomial confidence intervals for gate frequencies; the stage-cost
pattern of seeds_spec 4.5 (linear residual net, d = 4, N = 10: with stage cost the deep blocks'
weights vanish and pruning keeps the loss; without it the weights spread evenly).
"""

import copy
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr
from torch import nn
from torch.nn import functional as F

from odedepth.losses import (
    GatedDepthObjective,
    GateSchedule,
    adn_step,
    broadcast_gates,
    diminishing_returns_penalty,
    exit_stopped_loss,
    gated_depth_loss,
    kd_loss,
    sample_gates,
    self_distillation_loss,
    soft_halting_probs,
    stage_cost_loss,
)
from odedepth.models import create_model
from odedepth.stopping import FixedDepth, MaxProbability
from odedepth.trajectory import DepthTrajectory


class TinyGated(nn.Module):
    """S stages, each a mandatory residual block and a gated one (gated depth eq. (1))."""

    def __init__(self, d=6, S=3, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_stages = S
        self.stem = nn.Linear(d, d)
        self.base = nn.ModuleList(nn.Linear(d, d) for _ in range(S))
        self.gated = nn.ModuleList(nn.Linear(d, d) for _ in range(S))
        self.head = nn.Linear(d, classes)
        self.gates = torch.ones(S, dtype=torch.bool)

    def set_gates(self, g):
        self.gates = torch.as_tensor(g).bool().reshape(-1).clone()
        return self

    def forward(self, x):
        h = self.stem(x)
        for s in range(self.n_stages):
            h = h + torch.tanh(self.base[s](h))
            if self.gates[s]:
                h = h + torch.tanh(self.gated[s](h))
        return self.head(h)


def _np_kl(p_logits, q_logits):
    lp, lq = np_log_softmax(p_logits, axis=1), np_log_softmax(q_logits, axis=1)
    return rel_entr(np.exp(lp), np.exp(lq)).sum(1).mean()


# ------------------------------------------------------------------------------ distillation
def test_kd_loss_zero_for_identical_logits():
    z = torch.randn(7, 10)
    assert kd_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(z, z.clone(), T=3.0, topk=4).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_kd_loss_matches_scipy(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g,
                                                                            dtype=torch.float64)
    expected = _np_kl(t.numpy() / T, s.numpy() / T) * T * T  # KL(teacher || student)
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-10)


def test_kd_loss_topk_restricts_to_teacher_classes():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 12, generator=g, dtype=torch.float64), torch.randn(5, 12, generator=g,
                                                                             dtype=torch.float64)
    k = 4
    idx = np.argsort(-t.numpy(), axis=1)[:, :k]
    expected = _np_kl(np.take_along_axis(t.numpy(), idx, 1), np.take_along_axis(s.numpy(), idx, 1))
    assert kd_loss(s, t, 1.0, topk=k).item() == pytest.approx(expected, rel=1e-10)
    # topk beyond the number of classes is the full KL.
    assert kd_loss(s, t, topk=500).item() == pytest.approx(kd_loss(s, t).item(), rel=1e-12)


def test_self_distillation_loss_formula_and_detached_teacher():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 5, 1])
    loss = self_distillation_loss(s, t, y, alpha=0.3)
    ce = F.cross_entropy(s, y).item()
    expected = 0.3 * ce + 0.7 * _np_kl(t.detach().numpy(), s.detach().numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert t.grad is None and s.grad is not None


# ------------------------------------------------------------------------------------ gates
def test_gate_schedule_readings():
    p = GateSchedule(4).probs()
    torch.testing.assert_close(p, torch.tensor([0.9, 0.9 - 0.4 / 3, 0.5 + 0.4 / 3, 0.5],
                                               dtype=torch.float64))
    a = GateSchedule(4, mode="annealed", epochs=5)
    assert a.probs(0).tolist() == pytest.approx([0.9] * 4)
    assert a.probs(2).tolist() == pytest.approx([0.7] * 4)
    assert a.probs(4).tolist() == pytest.approx([0.5] * 4)
    assert a.probs(10).tolist() == pytest.approx([0.5] * 4)
    assert GateSchedule(3, mode="constant").probs(7).tolist() == pytest.approx([0.9] * 3)


def test_gate_sampling_frequencies_binomial_ci():
    p = torch.tensor([0.5, 0.7, 0.9, 0.2], dtype=torch.float64)
    n = 4000
    g = torch.Generator().manual_seed(3)
    draws = torch.stack([sample_gates(p, g) for _ in range(n)]).double()
    freq = draws.mean(0)
    half_width = 4 * torch.sqrt(p * (1 - p) / n)  # ~4 sigma: fails with prob ~1e-4 per stage
    assert ((freq - p).abs() <= half_width).all(), (freq, p)
    # Independent across stages: joint frequency of stages 0 and 1 both on ~ p0 p1.
    joint = (draws[:, 0] * draws[:, 1]).mean().item()
    q = 0.5 * 0.7
    assert abs(joint - q) <= 4 * math.sqrt(q * (1 - q) / n)


def test_gated_objective_cycle_and_distill_step():
    model = TinyGated()
    obj = GatedDepthObjective(model, [0.5, 0.7, 0.9], distill_every=10, alpha=0.5,
                              generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    kinds = []
    for _ in range(20):
        loss, info = obj(x, y)
        kinds.append(info["kind"])
        if info["kind"] == "gated":
            # The stochastic step's loss is the CE of the drawn sub-network.
            ref = F.cross_entropy(copy.deepcopy(model).set_gates(info["gates"])(x), y)
            assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert [i + 1 for i, k in enumerate(kinds) if k == "distill"] == [10, 20]
    # The distillation step: student = base (b = 0), teacher = full (b = 1), detached.
    model.zero_grad()
    obj.step = 29
    loss, info = obj(x, y)
    assert info["kind"] == "distill"
    teacher = copy.deepcopy(model).set_gates([1, 1, 1])(x)
    student = copy.deepcopy(model).set_gates([0, 0, 0])(x)
    ref = 0.5 * F.cross_entropy(student, y) + 0.5 * _np_kl(teacher.detach().double().numpy(),
                                                           student.detach().double().numpy())
    assert loss.detach().item() == pytest.approx(float(ref.detach()), rel=1e-5)
    loss.backward()
    # Gated branches appear only in the (detached) teacher: no gradient reaches them.
    assert all(p.grad is None for p in model.gated.parameters())
    assert all(p.grad is not None for p in model.base.parameters())


def test_gated_objective_add_mode_sums_both_losses():
    model = TinyGated()
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    obj = GatedDepthObjective(model, [0.5, 0.7, 0.9], distill_every=1, distill_mode="add",
                              generator=torch.Generator().manual_seed(3))
    loss, info = obj(x, y)
    teacher = copy.deepcopy(model).set_gates([1, 1, 1])(x).detach()
    student = copy.deepcopy(model).set_gates([0, 0, 0])(x)
    drawn = copy.deepcopy(model).set_gates(info["gates"])(x)
    ref = self_distillation_loss(student, teacher, y) + F.cross_entropy(drawn, y)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    # The draw is the generator's first Bernoulli draw.
    expected = torch.bernoulli(torch.tensor([0.5, 0.7, 0.9], dtype=torch.float64),
                               generator=torch.Generator().manual_seed(3)).bool()
    assert torch.equal(info["gates"], expected)


def test_gated_depth_loss_uses_given_gates():
    model = TinyGated()
    x, y = torch.randn(5, 6), torch.randint(0, 5, (5,))
    loss = gated_depth_loss(model, x, y, torch.tensor([True, False, True]))
    ref = F.cross_entropy(copy.deepcopy(model).set_gates([1, 0, 1])(x), y)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-7)


def test_adn_step_equals_one_step_on_combined_loss():
    model = TinyGated(seed=4)
    peer = copy.deepcopy(model)
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    lr, alpha, T, k = 0.1, 0.4, 2.0, 3
    out = adn_step(model, x, y, torch.optim.SGD(model.parameters(), lr=lr), alpha, T, topk=k)
    # Peer: one backward on alpha CE(super) + (1 - alpha) T^2 KL_topk(super.detach() || base).
    z_super = peer.set_gates([1, 1, 1])(x)
    z_base = peer.set_gates([0, 0, 0])(x)
    zt = z_super.detach()
    idx = zt.topk(k, dim=1).indices
    kd = F.kl_div(F.log_softmax(z_base.gather(1, idx) / T, 1), F.softmax(zt.gather(1, idx) / T, 1),
                  reduction="batchmean") * T * T
    total = alpha * F.cross_entropy(z_super, y) + (1 - alpha) * kd
    total.backward()
    with torch.no_grad():
        for p in peer.parameters():
            p -= lr * p.grad
    for a, b in zip(model.parameters(), peer.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert out["loss"] == pytest.approx(total.item(), rel=1e-5)


def test_models_integration_gated_resnet():
    m = create_model("resnet18", gated=True, num_classes=10, stem="cifar",
                            channels=(4, 8, 8, 8))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    obj = GatedDepthObjective(m, GateSchedule(m.n_stages), distill_every=2,
                              generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        loss, info = obj(x, y)
        assert torch.isfinite(loss)
        loss.backward()
    assert m.configuration == "FFFF"  # restored to the full network after each step
    r = adn_step(m, x, y, torch.optim.SGD(m.parameters(), lr=0.01), topk=5)
    assert math.isfinite(r["loss"]) and m.configuration == "FFFF"


# ------------------------------------------------------------------------------- stage cost
def test_stage_cost_closed_form_and_trajectory_input():
    outs = [torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
    y = torch.tensor([[0.0, 0.0]])

    def mse(o, t):
        return ((o - t) ** 2).sum()

    # gamma (1 + 4) + 0.5
    assert stage_cost_loss(outs, y, 0.3, mse).item() == pytest.approx(0.3 * 5 + 0.5)
    assert stage_cost_loss(outs, y, 0.0, mse).item() == pytest.approx(0.5)
    logits = torch.randn(3, 4, 5)
    lab = torch.tensor([0, 4, 2])
    traj = DepthTrajectory(depths=torch.arange(4.0), outputs=logits)
    ref = 0.2 * sum(F.cross_entropy(logits[:, k], lab) for k in range(3)) + F.cross_entropy(
        logits[:, 3], lab)
    assert stage_cost_loss(traj, lab, 0.2).item() == pytest.approx(ref.item(), rel=1e-6)


def _linear_regression_net(gamma, seed=0, wd=1e-3, iters=300):
    """seeds_spec 4.5: x_{k+1} = x_k + W_k x_k, H = identity, y = M x, weight decay."""
    torch.manual_seed(seed)
    d, N, n = 4, 10, 256
    M = torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(d, d, dtype=torch.float64) / 2
    X = torch.randn(n, d, dtype=torch.float64)
    Y = X @ M.T
    W = (0.01 * torch.randn(N, d, d, dtype=torch.float64)).requires_grad_()

    def outputs(W, keep=None):
        h, outs = X, [X]
        for k in range(N):
            if keep is None or k in keep:
                h = h + h @ W[k].T
            outs.append(h)
        return outs

    def mse(o, t):
        return ((o - t) ** 2).mean()

    # The regularised objective's minimiser (what long gradient descent approaches), by L-BFGS.
    opt = torch.optim.LBFGS([W], lr=1, max_iter=iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15, history_size=50)

    def closure():
        opt.zero_grad()
        loss = stage_cost_loss(outputs(W), Y, gamma, mse) + 0.5 * wd * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W = W.detach()
    norms = W.flatten(1).norm(dim=1)
    return norms, (lambda keep=None: mse(outputs(W, keep)[-1], Y).item())


def test_stage_cost_drives_deep_blocks_to_zero_and_pruning_keeps_loss():
    norms, loss = _linear_regression_net(gamma=0.1)
    rel = norms / norms.max()
    assert rel[0] == 1.0 and norms[0] > 0.8
    assert (rel[3:] < 0.01).all(), norms
    keep = {k for k in range(10) if rel[k] >= 0.01}
    assert len(keep) <= 3
    full, pruned = loss(), loss(keep)
    assert full < 1e-8 and pruned < 1e-5
    # Control (gamma = 0): weights spread over all blocks; the same pruning destroys the fit.
    norms0, loss0 = _linear_regression_net(gamma=0.0)
    assert norms0.min() / norms0.max() > 0.5
    assert loss0(keep) > 1e-2 and loss0() < 1e-5


# ------------------------------------------------------------------------------------ exits
def _traj(seed=0, b=6, n=4, c=3):
    g = torch.Generator().manual_seed(seed)
    return DepthTrajectory(depths=torch.arange(1.0, n + 1), outputs=3 * torch.randn(b, n, c,
                                                                                    generator=g))


def test_exit_stopped_loss_with_probabilities_closed_form():
    traj, y = _traj(), torch.tensor([0, 1, 2, 0, 1, 2])
    p = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    c = 0.3
    ell = torch.stack([F.cross_entropy(traj.outputs[:, k], y, reduction="none") for k in range(4)],
                      1)
    d = torch.arange(1.0, 5.0) / 4  # normalised depth
    expected = (p * (ell + c * d)).sum(1).mean()
    assert exit_stopped_loss(traj, y, p, c).item() == pytest.approx(expected.item(), rel=1e-6)


def test_exit_stopped_loss_hard_rule_and_soft_limit():
    traj, y = _traj(2), torch.tensor([0, 1, 2, 0, 1, 2])
    # FixedDepth(2): every sample stops at depth 2 (index 1).
    hard = exit_stopped_loss(traj, y, FixedDepth(2.0), 0.5)
    ref = F.cross_entropy(traj.outputs[:, 1], y) + 0.5 * 2 / 4
    assert hard.item() == pytest.approx(ref.item(), rel=1e-6)
    rule = MaxProbability(0.8)
    p = soft_halting_probs(traj, rule, temperature=1e-4)
    torch.testing.assert_close(p.sum(1), torch.ones(6))
    onehot = F.one_hot(rule.stop_index(traj), 4).float()
    torch.testing.assert_close(p, onehot, atol=1e-3, rtol=0)


@given(st.integers(0, 50), st.floats(0.05, 2.0))
def test_soft_halting_probs_is_a_distribution(seed, tau):
    traj = _traj(seed)
    p = soft_halting_probs(traj, MaxProbability(0.7), tau)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(1), torch.ones(6))


def test_soft_exit_objective_is_differentiable_in_logits():
    traj = _traj(3)
    out = traj.outputs.clone().requires_grad_()
    t2 = DepthTrajectory(depths=traj.depths, outputs=out)
    loss = exit_stopped_loss(t2, torch.zeros(6, dtype=torch.long), MaxProbability(0.6), 0.1,
                             temperature=0.2)
    loss.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_diminishing_returns_penalty_closed_form():
    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(5, 3, 2, generator=g) for _ in range(4)]
    cs = [0.5, 0.1, 2.0, 0.3]
    Fs = [c * h for c, h in zip(cs, hs)]  # ||F|| / ||h|| = c exactly
    w = [0.25, 0.5, 0.75, 1.0]
    expected = sum(wk * c * c for wk, c in zip(w, cs))
    assert diminishing_returns_penalty(Fs, hs).item() == pytest.approx(expected, rel=1e-6)
    assert diminishing_returns_penalty(Fs, hs, [1, 1, 1, 1]).item() == pytest.approx(
        sum(c * c for c in cs), rel=1e-6)


# ------------------------------------------------------------------------------------ DDP
def test_broadcast_gates_single_process_gloo(tmp_path):
    assert not dist.is_initialized()
    b = torch.tensor([True, False, True])
    assert torch.equal(broadcast_gates(b), b)  # no process group: no-op
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        draws = [sample_gates([0.5, 0.5, 0.5, 0.5], g1) for _ in range(10)]
        local = [torch.bernoulli(torch.full((4,), 0.5, dtype=torch.float64), generator=g2).bool()
                 for _ in range(10)]
        assert all(torch.equal(a, b) for a, b in zip(draws, local))
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank, world, store_path, out_dir):
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(1000 + rank)  # different local seeds on purpose
        synced = torch.stack([sample_gates([0.5] * 4, g) for _ in range(16)])
        local = torch.stack([sample_gates([0.5] * 4, g, sync=False) for _ in range(16)])
        # End to end: the objective on a DDP-wrapped gated model (it unwraps to set the gates),
        # each rank with its own data and its own gate seed.
        model = TinyGated(seed=0)
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        obj = GatedDepthObjective(ddp, [0.5, 0.5, 0.5], distill_every=3,
                                  generator=torch.Generator().manual_seed(rank))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(rank)
        steps = []
        for _ in range(6):
            x, y = torch.randn(4, 6), torch.randint(0, 5, (4,))
            opt.zero_grad()
            loss, info = obj(x, y)
            loss.backward()
            opt.step()
            steps.append(info["gates"])
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save((synced, local, torch.stack(steps), params),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gates_synchronised_across_two_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    (s0, l0, g0, p0), (s1, l1, g1, p1) = (torch.load(tmp_path / "rank0.pt"),
                                          torch.load(tmp_path / "rank1.pt"))
    assert torch.equal(s0, s1)
    assert torch.equal(g0, g1)  # the DDP training steps ran the same sub-networks on both ranks
    torch.testing.assert_close(p0, p1)  # and the replicas stayed identical
    # Unsynchronised, the different seeds draw different gates (64 fair coins agreeing: 2^-64):
    # the broadcast is what makes the ranks agree.
    assert not torch.equal(l0, l1)


# ------------------------------------------------------------------------------ bad input
def test_bad_input():
    z = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(z, torch.randn(3, 5))
    with pytest.raises(ValueError, match="batch, classes"):
        kd_loss(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z, z, T=0.0)
    with pytest.raises(ValueError, match="topk"):
        kd_loss(z, z, topk=0)
    with pytest.raises(ValueError, match="alpha"):
        self_distillation_loss(z, z, y, alpha=1.5)
    with pytest.raises(ValueError, match="target"):
        self_distillation_loss(z, z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="gamma"):
        stage_cost_loss([z, z], y, -0.1)
    with pytest.raises(ValueError, match="batch"):
        stage_cost_loss([z, torch.randn(2, 4)], y, 0.1)
    with pytest.raises(ValueError, match="target"):
        stage_cost_loss([z], torch.tensor([0]), 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_gates([0.5, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_gates([float("nan")])
    with pytest.raises(ValueError, match="exceeds"):
        GateSchedule(4, p_min=0.9, p_max=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GateSchedule(4, p_min=-0.1)
    with pytest.raises(ValueError, match="epochs"):
        GateSchedule(4, mode="annealed")
    with pytest.raises(ValueError, match="mode"):
        GateSchedule(4, mode="cosine")
    with pytest.raises(ValueError, match="expected 3"):
        GatedDepthObjective(TinyGated(), [0.5, 0.5])
    with pytest.raises(ValueError, match="alpha"):
        GatedDepthObjective(TinyGated(), alpha=-0.1)
    with pytest.raises(ValueError, match="distill_mode"):
        GatedDepthObjective(TinyGated(), distill_mode="both")
    with pytest.raises(TypeError, match="set_gates"):
        gated_depth_loss(nn.Linear(2, 2), torch.randn(1, 2), torch.tensor([0]), torch.ones(1))
    with pytest.raises(ValueError, match="alpha"):
        adn_step(TinyGated(), torch.randn(2, 6), torch.tensor([0, 1]),
                 torch.optim.SGD(TinyGated().parameters(), lr=0.1), alpha=2.0)
    with pytest.raises(ValueError, match="weights"):
        diminishing_returns_penalty([z], [z], [-1.0])
    with pytest.raises(ValueError, match="as many"):
        diminishing_returns_penalty([z, z], [z])
    with pytest.raises(TypeError, match="memoryless"):
        soft_halting_probs(_traj(), object())


# --------------------------------------------------------------------------- training engine
def test_train_engine_one_epoch_equals_manual_sgd_and_evaluate(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from odedepth.train import evaluate, fit, train_one_epoch

    torch.manual_seed(0)
    X, y = torch.randn(12, 6), torch.randint(0, 5, (12,))
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    model, peer = TinyGated(seed=5), TinyGated(seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(model, loader, opt)
    assert out["steps"] == 3
    for i in range(3):  # peer: plain SGD by hand on the same batches
        peer.zero_grad()
        F.cross_entropy(peer(X[4 * i:4 * i + 4]), y[4 * i:4 * i + 4]).backward()
        with torch.no_grad():
            for p in peer.parameters():
                p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), peer.parameters()):
        torch.testing.assert_close(a, b)
    ev = evaluate(model, loader)
    with torch.no_grad():
        logits = model(X)
    assert ev["accuracy"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert ev["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    # fit with an objective and a checkpoint that reloads to the same weights.
    obj = GatedDepthObjective(model, [0.9, 0.9, 0.9], generator=torch.Generator().manual_seed(0))
    hist = fit(model, loader, epochs=2, lr=0.05, objective=obj, eval_loader=loader,
               checkpoint=str(tmp_path / "ck.pt"))
    assert len(hist) == 2 and obj.step == 6
    from odedepth.checkpoint import load

    state = load(str(tmp_path / "ck.pt"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state["model"][k], v)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, loader, epochs=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FileNotFoundError, match="checkpoint directory"):
        fit(model, loader, epochs=1, checkpoint=str(tmp_path / "missing" / "ck.pt"))
    for k, v in model.state_dict().items():  # refused before any training step
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="either"):
        train_one_epoch(model, loader, opt, objective=obj, step_fn=adn_step)
