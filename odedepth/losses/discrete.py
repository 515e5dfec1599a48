"""Objectives for networks with blocks: gated depth, ADN distillation, stage cost, exits.

- **Gated depth** (Darzi et al., CVPRW 2025, eq. (1)-(7)): one gate setting b ~ prod_s
  Bernoulli(p_s) per mini-batch (:func:`sample_gates`, synchronised across data-parallel ranks
  by :func:`broadcast_gates`), and every k-th step a self-distillation step
  L = alpha CE(f(x; b=0), y) + (1 - alpha) KL(f(x; b=1) || f(x; b=0)) with the teacher detached
  (:class:`GatedDepthObjective`, alpha = 0.5, k = 10). Gate probabilities between p_min = 0.5
  and p_max = 0.9 (:class:`GateSchedule`: the paper's schedule formula is not available; we offer
  per-stage linear and annealed-over-epochs readings).
- **ADN** (Kang & Lee, NeurIPS 2024, `train_one_epoch_twobackward`): super-net CE weighted alpha,
  base-net KD on the super-net's top-k logits at temperature T weighted 1 - alpha, two backward
  passes, one optimizer step (:func:`adn_step`).
- **Stage cost** (Puttschneider et al. 2025): gamma sum_{k<N} l(y_hat_k) + l(y_hat_N) on the
  intermediate outputs (:func:`stage_cost_loss`).
- **Expected stopped loss plus depth cost** on exits, with the stopping rules of the continuous
  side (:func:`exit_stopped_loss`, delegating to
  :func:`odedepth.losses.continuous.expected_stopped_loss`).
- **Diminishing returns** (ours): sum_k w_k ||F_k(h_k)||^2 / ||h_k||^2 with w_k increasing
  (:func:`diminishing_returns_penalty`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from ..trajectory import DepthTrajectory

__all__ = [
    "kd_loss",
    "self_distillation_loss",
    "GateSchedule",
    "sample_gates",
    "broadcast_gates",
    "gated_depth_loss",
    "GatedDepthObjective",
    "adn_step",
    "stage_cost_loss",
    "soft_halting_probs",
    "exit_stopped_loss",
    "diminishing_returns_penalty",
]


# ------------------------------------------------------------------------------ validation
def _check_unit(name: str, value, who: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {type(value).__name__}") from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{who}: {name} must lie in [0, 1], got {value}")
    return v


def _check_positive(name: str, value, who: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{who}: {name} must be positive and finite, got {value}")
    return v


def _check_logits_pair(student: Tensor, teacher: Tensor, who: str) -> None:
    for name, t in (("student", student), ("teacher", teacher)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}: {name} logits must be a tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{who}: {name} logits must have shape (batch, classes), got "
                             f"{tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{who}: {name} logits must be floating point, got {t.dtype}")
    if student.shape != teacher.shape:
        raise ValueError(f"{who}: student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)} logits differ in shape")


def _check_target(logits: Tensor, y: Tensor, who: str) -> None:
    if not isinstance(y, Tensor) or y.shape != logits.shape[:1]:
        raise ValueError(f"{who}: target must have shape ({logits.shape[0]},), got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")


def _logits(out):
    """Model outputs are logits or `(logits, DepthTrajectory)` when exits are on."""
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------- distillation
def kd_loss(student: Tensor, teacher: Tensor, T: float = 1.0, topk: int | None = None) -> Tensor:
    """Knowledge-distillation loss KL(softmax(teacher/T) || softmax(student/T)) * T^2, batch mean.

    The teacher is detached. With `topk`, both distributions are restricted to (and renormalised
    over) the teacher's k largest logits of each sample, as in ADN's base-net loss.

    **Arguments:**

    - `student`, `teacher`: `(batch, classes)` logits.
    - `T`: temperature > 0 (the T^2 factor keeps gradient scales comparable across T; Hinton et
      al. 2015).
    - `topk`: restrict to the teacher's top-k classes (clipped to the number of classes).

    **Returns:** a scalar, 0 when student == teacher.
    """
    who = "kd_loss"
    _check_logits_pair(student, teacher, who)
    T = _check_positive("temperature T", T, who)
    teacher = teacher.detach()
    if topk is not None:
        if int(topk) != topk or topk < 1:
            raise ValueError(f"{who}: topk must be a positive int, got {topk}")
        k = min(int(topk), teacher.shape[1])
        idx = teacher.topk(k, dim=1).indices
        teacher, student = teacher.gather(1, idx), student.gather(1, idx)
    log_p_s = F.log_softmax(student / T, dim=1)
    log_p_t = F.log_softmax(teacher / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


def self_distillation_loss(student: Tensor, teacher: Tensor, target: Tensor, alpha: float = 0.5,
                           T: float = 1.0) -> Tensor:
    """Gated depth's distillation step, eq. (5)-(7): alpha CE(student, y) + (1 - alpha) KL(teacher || student).

    **Arguments:**

    - `student`: logits of the base configuration f(x; b = 0).
    - `teacher`: logits of the full configuration f(x; b = 1) (detached here).
    - `target`: `(batch,)` labels.
    - `alpha`: weight in [0, 1] (paper: 0.5).
    - `T`: distillation temperature (not given by the paper; ADN uses 1).

    **Returns:** a scalar.
    """
    who = "self_distillation_loss"
    a = _check_unit("alpha", alpha, who)
    _check_logits_pair(student, teacher, who)
    _check_target(student, target, who)
    return a * F.cross_entropy(student, target) + (1 - a) * kd_loss(student, teacher, T)


# ---------------------------------------------------------------------------------- gates
@dataclass
class GateSchedule:
    """Gate keep-probabilities p_s between p_min and p_max.

    The Gated Depth paper cross-validates p_min = 0.5 and p_max = 0.9 but its schedule formula
    (Sec. 3.2) is not available; we offer the two plausible readings and flag the choice:

    - `"per_stage"`: linear in the stage index, p_s = p_max - s/(S-1) (p_max - p_min), s = 0..S-1
      (stochastic-depth style: deeper refinements are bypassed more often); constant in time.
    - `"annealed"`: the same p for every stage, linear over epochs from p_max (epoch 0) down to
      p_min (last epoch): training starts near the full network and bypasses more as it goes.
    - `"constant"`: p_s = p_max for every stage and epoch.

    **Arguments:** `n_stages` S, `p_min`, `p_max` (0 <= p_min <= p_max <= 1), `mode`, `epochs`
    (required for `"annealed"`).
    """

    n_stages: int
    p_min: float = 0.5
    p_max: float = 0.9
    mode: str = "per_stage"
    epochs: int | None = None

    def __post_init__(self):
        who = "GateSchedule"
        if int(self.n_stages) != self.n_stages or self.n_stages < 1:
            raise ValueError(f"{who}: n_stages must be a positive int, got {self.n_stages}")
        self.p_min = _check_unit("p_min", self.p_min, who)
        self.p_max = _check_unit("p_max", self.p_max, who)
        if self.p_min > self.p_max:
            raise ValueError(f"{who}: p_min {self.p_min} exceeds p_max {self.p_max}")
        if self.mode not in ("per_stage", "annealed", "constant"):
            raise ValueError(f"{who}: mode must be 'per_stage', 'annealed' or 'constant', got "
                             f"{self.mode!r}")
        if self.mode == "annealed" and (self.epochs is None or int(self.epochs) != self.epochs
                                        or self.epochs < 1):
            raise ValueError(f"{who}: mode 'annealed' needs epochs >= 1, got {self.epochs}")

    def probs(self, epoch: int = 0) -> Tensor:
        """`(S,)` float64 keep-probabilities at `epoch` (0-based)."""
        S = int(self.n_stages)
        if self.mode == "constant":
            return torch.full((S,), self.p_max, dtype=torch.float64)
        if self.mode == "per_stage":
            if S == 1:
                return torch.tensor([self.p_max], dtype=torch.float64)
            s = torch.arange(S, dtype=torch.float64)
            return self.p_max - s / (S - 1) * (self.p_max - self.p_min)
        if epoch < 0:
            raise ValueError(f"GateSchedule: epoch must be >= 0, got {epoch}")
        frac = 1.0 if self.epochs == 1 else min(epoch / (self.epochs - 1), 1.0)
        return torch.full((S,), self.p_max - frac * (self.p_max - self.p_min), dtype=torch.float64)


def _check_probs(probs, who: str) -> Tensor:
    p = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
    if p.numel() == 0:
        raise ValueError(f"{who}: need at least one gate probability")
    if not torch.isfinite(p).all() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"{who}: gate probabilities must lie in [0, 1], got {p.tolist()}")
    return p


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def broadcast_gates(gates: Tensor, src: int = 0, group=None) -> Tensor:
    """Make every data-parallel rank use rank `src`'s gates (no-op without torch.distributed).

    Layer dropping under DDP fails if ranks run different sub-networks: gradients of parameters
    used on one rank and not another are all-reduced against missing contributions (and DDP may
    hang waiting for them). Broadcasting one draw avoids that.

    **Arguments:**

    - `gates`: `(S,)` bool (or 0/1) tensor drawn locally.
    - `src`: the rank whose draw wins; `group`: process group (default world).

    **Returns:** `(S,)` bool tensor on the input's device, identical on all ranks.
    """
    if not isinstance(gates, Tensor):
        raise TypeError(f"broadcast_gates: gates must be a tensor, got {type(gates).__name__}")
    if not _dist_ready() or dist.get_world_size(group) == 1:
        return gates.bool()
    # NCCL only moves CUDA tensors; gloo/mpi move CPU tensors.
    backend = dist.get_backend(group)
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    buf = gates.to(device=dev, dtype=torch.uint8).contiguous()
    dist.broadcast(buf, src=src, group=group)
    return buf.to(gates.device).bool()


def sample_gates(probs, generator: torch.Generator | None = None, *, sync: bool = True,
                 src: int = 0, group=None) -> Tensor:
    """Draw one gate setting b_s ~ Bernoulli(p_s) for a mini-batch, identical on all ranks.

    **Arguments:**

    - `probs`: `(S,)` keep-probabilities in [0, 1].
    - `generator`: optional CPU generator.
    - `sync`: broadcast rank `src`'s draw to the others when torch.distributed is initialised.

    **Returns:** `(S,)` bool tensor (True = the stage's gated sub-path runs).
    """
    p = _check_probs(probs, "sample_gates")
    b = torch.bernoulli(p, generator=generator).bool()
    return broadcast_gates(b, src=src, group=group) if sync else b


def _unwrap(model: nn.Module) -> nn.Module:
    """The module behind a DistributedDataParallel / DataParallel wrapper (which has no gates).

    DDP needs `find_unused_parameters=True` with gates: a bypassed sub-path's parameters get no
    gradient in that step (the same on every rank, since the gates are broadcast)."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def _set_gates(model: nn.Module, gates: Tensor) -> None:
    model = _unwrap(model)
    if not hasattr(model, "set_gates"):
        raise TypeError(f"{type(model).__name__} has no set_gates(gates): build the model with "
                        "gated=True (odedepth.models) or implement set_gates")
    model.set_gates(gates)


def _n_stages(model: nn.Module) -> int:
    n = getattr(_unwrap(model), "n_stages", None)
    if n is None:
        raise TypeError(f"{type(model).__name__} has no n_stages attribute")
    return int(n)


def gated_depth_loss(model: nn.Module, x: Tensor, target: Tensor, gates: Tensor,
                     loss_fn: Callable | None = None) -> Tensor:
    """Loss of one mini-batch under one gate setting (gated depth eq. (2)-(4), one sample).

    **Arguments:** `model` with `set_gates`; `x`, `target` the mini-batch; `gates` `(S,)` bools;
    `loss_fn(logits, target)` (cross-entropy by default).

    **Returns:** a scalar.
    """
    _set_gates(model, gates)
    logits = _logits(model(x))
    _check_target(logits, target, "gated_depth_loss")
    return (F.cross_entropy if loss_fn is None else loss_fn)(logits, target)


class GatedDepthObjective:
    """The gated-depth training objective, one call per optimisation step.

    Step t (counted from 1): if `distill_every` divides t, the self-distillation step of eq.
    (5)-(7): the full configuration (b = 1) is run without gradient as the teacher, the base
    configuration (b = 0) is the student, loss alpha CE + (1 - alpha) KL. Otherwise one gate
    setting is drawn for the whole mini-batch (synchronised across ranks) and the loss is the
    cross-entropy of that sub-network. Our reading of the unspecified parts: the distillation step
    *replaces* the stochastic step of that iteration (`distill_mode="replace"`; `"add"` also runs
    the stochastic step and sums the two losses), the teacher is detached (as in ADN), T = 1.

    **Arguments:**

    - `model`: a gated model with `set_gates` and `n_stages` (odedepth.models with gated=True).
    - `schedule`: a :class:`GateSchedule`, or fixed probabilities `(S,)`; default
      `GateSchedule(S)` (per-stage linear 0.9 -> 0.5).
    - `distill_every`: k (paper: 10); 0 disables distillation.
    - `alpha`: distillation weight (paper: 0.5); `T`: temperature.
    - `generator`: CPU generator for the gate draws; `sync`: broadcast across ranks.
    - `loss_fn`: `(logits, target) -> scalar` for the stochastic steps.
    - `distill_mode`: `"replace"` or `"add"` (see above).

    Call `objective(x, y)` -> `(loss, info)`; `info` has `"kind"` (`"gated"`/`"distill"`) and
    `"gates"`; the model is left in its full configuration afterwards. Call :meth:`set_epoch` at each epoch for annealed schedules.
    """

    def __init__(self, model: nn.Module, schedule: GateSchedule | Sequence[float] | Tensor | None
                 = None, *, distill_every: int = 10, alpha: float = 0.5, T: float = 1.0,
                 generator: torch.Generator | None = None, sync: bool = True,
                 loss_fn: Callable | None = None, distill_mode: str = "replace"):
        who = "GatedDepthObjective"
        if distill_mode not in ("replace", "add"):
            raise ValueError(f"{who}: distill_mode must be 'replace' or 'add', got {distill_mode!r}")
        self.distill_mode = distill_mode
        S = _n_stages(model)
        if not hasattr(_unwrap(model), "set_gates"):
            raise TypeError(f"{who}: model has no set_gates; build it with gated=True")
        if schedule is None:
            schedule = GateSchedule(S)
        if isinstance(schedule, GateSchedule):
            if schedule.n_stages != S:
                raise ValueError(f"{who}: schedule has {schedule.n_stages} stages, model {S}")
        else:
            p = _check_probs(schedule, who)
            if p.numel() != S:
                raise ValueError(f"{who}: expected {S} gate probabilities, got {p.numel()}")
            schedule = p
        if int(distill_every) != distill_every or distill_every < 0:
            raise ValueError(f"{who}: distill_every must be a non-negative int, got {distill_every}")
        self.model, self.schedule = model, schedule
        self.k = int(distill_every)
        self.alpha = _check_unit("alpha", alpha, who)
        self.T = _check_positive("temperature T", T, who)
        self.generator, self.sync = generator, sync
        self.loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        self.step = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def probs(self) -> Tensor:
        s = self.schedule
        return s.probs(self.epoch) if isinstance(s, GateSchedule) else s

    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, dict]:
        self.step += 1
        S = _n_stages(self.model)
        if self.k and self.step % self.k == 0:
            _set_gates(self.model, torch.ones(S, dtype=torch.bool))
            with torch.no_grad():
                teacher = _logits(self.model(x))
            _set_gates(self.model, torch.zeros(S, dtype=torch.bool))
            student = _logits(self.model(x))
            loss = self_distillation_loss(student, teacher, target, self.alpha, self.T)
            info = {"kind": "distill", "gates": torch.zeros(S, dtype=torch.bool)}
            if self.distill_mode == "add":
                b = sample_gates(self.probs(), self.generator, sync=self.sync)
                loss = loss + gated_depth_loss(self.model, x, target, b, self.loss_fn)
                info["gates"] = b
        else:
            b = sample_gates(self.probs(), self.generator, sync=self.sync)
            loss = gated_depth_loss(self.model, x, target, b, self.loss_fn)
            info = {"kind": "gated", "gates": b}
        # The graph is built: leave the model in its full configuration, so that code running
        # after a step (evaluation, checkpoints) does not inherit a random sub-network.
        _set_gates(self.model, torch.ones(S, dtype=torch.bool))
        return loss, info


def adn_step(model: nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
             alpha: float = 0.5, T: float = 1.0, topk: int = 500, *, scaler=None,
             label_smoothing: float = 0.0) -> dict[str, float]:
    """One ADN training iteration: two forward/backward passes, one optimizer step.

    (1) super-net (all gates on): alpha CE(z_super, y), backward; (2) base-net (all skippable
    sub-paths off): (1 - alpha) KD(z_base, z_super.detach(), T) on the super-net's top-k logits,
    backward; (3) one `optimizer.step()`. Gradients of both passes accumulate, so this equals one
    step on alpha CE + (1 - alpha) KD with a detached teacher, at the memory of one pass.

    **Arguments:**

    - `model`: gated model with `set_gates` and `n_stages`.
    - `x`, `y`: the mini-batch.
    - `optimizer`: its gradients are zeroed first.
    - `alpha` in [0, 1] (ADN: 0.5), `T` > 0 (ADN: 1), `topk` (ADN: 500 of ImageNet's 1000).
    - `scaler`: an optional `torch.amp.GradScaler` (mixed precision).
    - `label_smoothing`: for the super-net CE (ADN default 0).

    **Returns:** `{"loss_super", "loss_base", "loss"}` as floats (weighted terms).
    """
    who = "adn_step"
    a = _check_unit("alpha", alpha, who)
    _check_positive("temperature T", T, who)
    if int(topk) != topk or topk < 1:
        raise ValueError(f"{who}: topk must be a positive int, got {topk}")
    S = _n_stages(model)
    optimizer.zero_grad(set_to_none=True)

    def backward(loss):
        (scaler.scale(loss) if scaler is not None else loss).backward()

    _set_gates(model, torch.ones(S, dtype=torch.bool))
    z_super = _logits(model(x))
    _check_target(z_super, y, who)
    loss_super = a * F.cross_entropy(z_super, y, label_smoothing=label_smoothing)
    backward(loss_super)
    _set_gates(model, torch.zeros(S, dtype=torch.bool))
    z_base = _logits(model(x))
    loss_base = (1 - a) * kd_loss(z_base, z_super.detach(), T, topk)
    backward(loss_base)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    _set_gates(model, torch.ones(S, dtype=torch.bool))
    return {"loss_super": loss_super.item(), "loss_base": loss_base.item(),
            "loss": loss_super.item() + loss_base.item()}


# ------------------------------------------------------------------------------ stage cost
def _output_list(traj_or_outputs, who: str) -> list[Tensor]:
    if isinstance(traj_or_outputs, DepthTrajectory):
        if traj_or_outputs.valid is not None and not traj_or_outputs.valid.all():
            raise ValueError(f"{who}: every sample must visit every depth (trajectory has halted "
                             "samples)")
        return list(traj_or_outputs.outputs.unbind(dim=1))
    outs = list(traj_or_outputs)
    if not outs:
        raise ValueError(f"{who}: need at least one output")
    for i, o in enumerate(outs):
        if not isinstance(o, Tensor):
            raise TypeError(f"{who}: output {i} is a {type(o).__name__}, not a tensor")
        if o.shape[:1] != outs[0].shape[:1]:
            raise ValueError(f"{who}: output {i} has batch {o.shape[0]}, output 0 has "
                             f"{outs[0].shape[0]}")
    return outs


def stage_cost_loss(traj_or_outputs: DepthTrajectory | Sequence[Tensor], target: Tensor,
                    gamma: float, loss_fn: Callable | None = None) -> Tensor:
    """Stage-cost objective gamma sum_{k<N} l(y_hat_k) + l(y_hat_N) (Puttschneider et al. 2025).

    The intermediate outputs y_hat_k are the head applied to hidden state k forwarded through the
    later non-trivial skip projections (exits="shared" in odedepth.models); gamma = 0 is standard
    training. With weight decay, this biases the weights of unnecessary deep blocks to zero
    (their Theorem 3.1), which makes them prunable.

    **Arguments:**

    - `traj_or_outputs`: a :class:`~odedepth.DepthTrajectory` (outputs at every depth, last =
      final output) or a list [y_hat_0, ..., y_hat_N].
    - `target`: labels (or regression targets for a custom `loss_fn`).
    - `gamma`: stage weight >= 0.
    - `loss_fn`: `(output, target) -> scalar`, cross-entropy by default.

    **Returns:** a scalar.
    """
    who = "stage_cost_loss"
    g = float(gamma)
    if not math.isfinite(g) or g < 0:
        raise ValueError(f"{who}: gamma must be >= 0 and finite, got {gamma}")
    outs = _output_list(traj_or_outputs, who)
    if not isinstance(target, Tensor) or target.shape[:1] != outs[0].shape[:1]:
        raise ValueError(f"{who}: target must have {outs[0].shape[0]} samples, got "
                         f"{tuple(target.shape) if isinstance(target, Tensor) else target!r}")
    fn = F.cross_entropy if loss_fn is None else loss_fn
    final = fn(outs[-1], target)
    if g == 0 or len(outs) == 1:
        return final
    return g * sum(fn(o, target) for o in outs[:-1]) + final


# ------------------------------------------------------------------- exits: stopped loss
def soft_halting_probs(traj: DepthTrajectory, rule, temperature: float = 0.1) -> Tensor:
    """Differentiable halting distribution from a memoryless stopping rule's signed score.

    Hazard lambda_k = sigmoid(score_k / temperature) at every exit but the last (the rule stops
    where score >= 0; temperature -> 0 recovers its hard decision), then
    p_k = lambda_k prod_{j<k} (1 - lambda_j) and the remaining mass at the last visited depth.

    **Arguments:**

    - `traj`: the trajectory of exits; `rule`: a memoryless
      :class:`~odedepth.stopping.StoppingRule` (e.g. `MaxProbability`, `Entropy`).
    - `temperature`: > 0.

    **Returns:** `(batch, n)` probabilities, rows summing to 1, zero on unvisited depths.
    """
    who = "soft_halting_probs"
    if not isinstance(traj, DepthTrajectory):
        raise TypeError(f"{who}: traj must be a DepthTrajectory, got {type(traj).__name__}")
    if not getattr(rule, "memoryless", False) or not hasattr(rule, "score"):
        raise TypeError(f"{who}: rule must be a memoryless StoppingRule, got {type(rule).__name__}")
    tau = _check_positive("temperature", temperature, who)
    b, n = traj.batch_size, traj.n_depths
    flat_states = None if traj.states is None else traj.states.reshape(b * n, *traj.states.shape[2:])
    score = rule.score(traj.depth_grid().reshape(b * n), flat_states,
                       traj.outputs.reshape(b * n, *traj.outputs.shape[2:])).reshape(b, n)
    lam = torch.sigmoid(score / tau)
    valid = traj.valid_mask()
    last = traj.last_index()
    is_last = torch.arange(n, device=lam.device)[None, :] == last[:, None]
    lam = torch.where(is_last, torch.ones_like(lam), lam)
    lam = torch.where(valid, lam, torch.zeros_like(lam))
    survive = torch.cumprod(torch.cat([torch.ones_like(lam[:, :1]), 1 - lam[:, :-1]], dim=1), dim=1)
    return lam * survive


def exit_stopped_loss(traj: DepthTrajectory, target: Tensor, halting, depth_cost: float = 0.0,
                      *, temperature: float | None = None, use_cost: bool = False,
                      normalize: bool = True, loss_fn: Callable | None = None,
                      reduction: str = "mean") -> Tensor:
    """Expected stopped loss plus depth cost over a network's exits, E_k[l_k + c d_k].

    Uses the continuous side's :func:`~odedepth.losses.continuous.expected_stopped_loss` on the
    trajectory, so discrete exits and ODE checkpoints share one objective and one set of rules.

    **Arguments:**

    - `traj`: exits of a model (`model(x)[1]`); `target`: labels.
    - `halting`: `(batch, n)` probabilities, a hazard rule with `halting_probs`, or a
      :class:`~odedepth.stopping.StoppingRule`. With `temperature`, a memoryless rule is relaxed
      by :func:`soft_halting_probs` (differentiable in the logits); without, it stops hard.
    - `depth_cost`: c >= 0 per unit of depth.
    - `use_cost`: measure depth by the trajectory's cumulative cost (e.g. multiply-adds) instead
      of the block index; `normalize`: divide depth (or cost) by its maximum so that c is the
      price of the whole network.
    - `loss_fn`, `reduction`: as in `expected_stopped_loss`.

    **Returns:** the reduced objective.
    """
    from .continuous import expected_stopped_loss

    who = "exit_stopped_loss"
    if not isinstance(traj, DepthTrajectory):
        raise TypeError(f"{who}: traj must be a DepthTrajectory, got {type(traj).__name__}")
    # Resolve the rule on the trajectory as the model produced it (rules read raw depths), then
    # hand probabilities to the shared objective.
    if isinstance(halting, Tensor):
        p = halting
    elif hasattr(halting, "halting_probs"):
        p = halting.halting_probs(traj)
    elif temperature is not None:
        p = soft_halting_probs(traj, halting, temperature)
    elif hasattr(halting, "stop_index"):
        p = F.one_hot(halting.stop_index(traj), traj.n_depths).to(traj.outputs.dtype)
    else:
        raise TypeError(f"{who}: halting must be a (batch, n) tensor or a stopping rule, got "
                        f"{type(halting).__name__}")
    if normalize:
        d = traj.cost_grid() if use_cost else traj.depth_grid()
        scale = d.abs().amax().clamp_min(torch.finfo(d.dtype).tiny)
        traj = DepthTrajectory(depths=traj.depths / scale if not use_cost else traj.depths,
                               outputs=traj.outputs, states=traj.states,
                               cost=(traj.cost_grid() / scale) if use_cost else traj.cost,
                               kind=traj.kind, valid=traj.valid)
    return expected_stopped_loss(traj, target, p, depth_cost, loss_fn=loss_fn,
                                 use_cost=use_cost, reduction=reduction)


# ------------------------------------------------------------------- diminishing returns
def diminishing_returns_penalty(branch_outputs: Sequence[Tensor], states: Sequence[Tensor],
                                weights: Sequence[float] | Tensor | None = None,
                                eps: float = 1e-12) -> Tensor:
    """Depth regulariser for diminishing returns (ours): sum_k w_k E_x ||F_k(h_k)||^2 / ||h_k||^2.

    Penalising the relative update of block k more the deeper it is (w_k increasing) pushes the
    network to do its work early, so that later blocks refine (ADN Fig. 3 observes such small
    ratios in trained skippable blocks) and the gain from more depth decays, the condition under
    which an optimal stopping depth is finite (Qi 2025). The continuous counterpart is the
    weighted kinetic term of :mod:`odedepth.losses.continuous`.

    **Arguments:**

    - `branch_outputs`: F_k(h_k) for k = 0..K-1 (`(batch, ...)` each, before the branch scale).
    - `states`: h_k, same shapes.
    - `weights`: `(K,)` non-negative w_k; default (k + 1) / K.
    - `eps`: guards ||h_k|| = 0.

    **Returns:** a scalar.
    """
    who = "diminishing_returns_penalty"
    Fs, hs = list(branch_outputs), list(states)
    if not Fs or len(Fs) != len(hs):
        raise ValueError(f"{who}: need as many branch outputs as states (>= 1), got {len(Fs)} "
                         f"and {len(hs)}")
    K = len(Fs)
    if weights is None:
        w = torch.arange(1, K + 1, dtype=Fs[0].dtype, device=Fs[0].device) / K
    else:
        w = torch.as_tensor(weights, dtype=Fs[0].dtype, device=Fs[0].device).reshape(-1)
        if w.numel() != K or not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{who}: weights must be {K} non-negative finite numbers, got "
                             f"{w.tolist()}")
    total = Fs[0].new_zeros(())
    for k, (f, h) in enumerate(zip(Fs, hs)):
        if f.shape != h.shape:
            raise ValueError(f"{who}: branch output {k} {tuple(f.shape)} and state "
                             f"{tuple(h.shape)} differ in shape")
        num = f.flatten(1).pow(2).sum(1)
        den = h.flatten(1).pow(2).sum(1).clamp_min(eps)
        total = total + w[k] * (num / den).mean()
    return total
