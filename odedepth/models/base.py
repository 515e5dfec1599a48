"""DepthNet: the machinery every model family shares.

A family (ResNet, ViT, residual MLP) provides a stem, a list of stages of residual blocks, a
head, and how to read an exit out of a hidden state. This base class owns everything that is
about *depth*: which blocks run (Bernoulli gates per stage, static configurations), the
skip-aware normalisation switch, the calibration of the all-on configuration, exits that
produce a :class:`~odedepth.DepthTrajectory`, and per-sample early exit with batch compaction.
One executor (:meth:`DepthNet._run`) serves all three forwards, so they cannot drift apart.

References:

- Kang & Lee, "Adaptive Depth Networks with Skippable Sub-Paths", NeurIPS 2024 (ADN): the
  mandatory/skippable split, skip-aware BN, configuration strings.
- Darzi et al., "Gated Depth", CVPRW 2025: Bernoulli gates b_s ~ Bernoulli(p_s), one sample per
  mini-batch, calibration by p_s of the all-on configuration.
- Püttschneider et al., arXiv 2506.21453: shared exits through later skip projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..trajectory import DepthTrajectory
from .options import adn_split, check_exits, check_gate_probs, parse_configuration

__all__ = ["DepthNet", "early_exit"]


@dataclass
class _Step:
    block: nn.Module
    stage: int
    index: int  # global 0-based block index in the unpruned numbering of this model
    calib_start: bool  # remember h_b before this block (first gated block of its stage)
    calib_end: bool  # apply h = h_b + p_s (h - h_b) after this block (last gated block)
    prob: float


class DepthNet(nn.Module):
    """Base class of the depth-aware models (not instantiated directly).

    Subclasses call :meth:`_init_depth` once their blocks exist and implement
    :meth:`stage_blocks`, :meth:`_check_input`, :meth:`_forward_stem`, :meth:`_forward_head`,
    :meth:`_shared_exit`, :meth:`_stem_macs` and give every block a ``macs(shape)`` method.
    """

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _mandatory_counts(layers, gated: bool, split=None, min_mandatory=None) -> list[int]:
        """Per-stage mandatory block counts (ADN rule unless `split` overrides)."""
        if not gated:
            return [int(n) for n in layers]
        if split is None:
            counts = [adn_split(n) for n in layers]
        else:
            counts = [int(m) for m in split]
            if len(counts) != len(layers) or any(
                    m < 0 or m > n for m, n in zip(counts, layers)):
                raise ValueError(f"split: expected {len(layers)} mandatory counts within the "
                                 f"stage sizes {list(layers)}, got {list(split)}")
        if min_mandatory is not None:
            counts = [max(m, lo) if n > 0 else 0
                      for m, n, lo in zip(counts, layers, min_mandatory)]
        return counts

    def _init_depth(self, *, n_mandatory, gated, gate_probs, exits, calibrate):
        self.gated = bool(gated)
        self.exits_mode = check_exits(exits)
        self._n_mandatory = list(n_mandatory)
        n_stages = len(self._n_mandatory)
        # Plain tensor, not a buffer: the state_dict of a gated model stays the ADN layout.
        self.gate_probs = check_gate_probs(gate_probs, n_stages)
        self.calibrate = bool(calibrate)
        self._skip = [False] * n_stages
        self._sync_norms()

    # ------------------------------------------------------------------ to implement
    def stage_blocks(self) -> list[list[nn.Module]]:
        """The residual blocks, grouped by stage (the unit a gate switches)."""
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        raise NotImplementedError

    def _forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _forward_head(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _shared_exit(self, h: Tensor, stage: int) -> Tensor:
        raise NotImplementedError

    def _stem_macs(self, shape) -> tuple[int, tuple]:
        raise NotImplementedError

    # ------------------------------------------------------------------ structure
    @property
    def n_stages(self) -> int:
        return len(self._n_mandatory)

    @property
    def n_blocks(self) -> int:
        return sum(len(b) for b in self.stage_blocks())

    def mandatory_counts(self) -> list[int]:
        """Mandatory (never skipped) blocks per stage; all blocks when `gated=False`."""
        return list(self._n_mandatory)

    def skippable_counts(self) -> list[int]:
        """Skippable blocks per stage (the gated refinement sub-paths)."""
        return [len(b) - m for b, m in zip(self.stage_blocks(), self._n_mandatory)]

    # ------------------------------------------------------------------ gates
    def _require_gated(self, what: str):
        if not self.gated:
            raise ValueError(f"{what}: this model was built with gated=False; rebuild it with "
                             "gated=True to switch sub-paths")

    @property
    def gates(self) -> Tensor:
        """`(S,)` bool: True where the stage's gated sub-path runs (b_s = 1)."""
        return torch.tensor([not s for s in self._skip], dtype=torch.bool)

    @property
    def configuration(self) -> str:
        """Current configuration string (T = that stage skips its skippable blocks)."""
        return "".join("T" if s else "F" for s in self._skip)

    def configure(self, config) -> DepthNet:
        """Select a static sub-network: `config` = "TFTF"-style string, one letter per stage.

        T skips the stage's skippable blocks (and switches its mandatory blocks to the skip-aware
        norms), F runs them. "F" * S is the full network, "T" * S the ADN base network.

        **Returns:** the model itself (for chaining). **Raises:** `ValueError` for a bad string.
        """
        self._require_gated("configure")
        self._skip = parse_configuration(config, self.n_stages)
        self._sync_norms()
        return self

    def set_gates(self, gates) -> DepthNet:
        """Set the gates b_s directly: `gates` is `(S,)` bools/0-1, True = sub-path on."""
        self._require_gated("set_gates")
        if isinstance(gates, Tensor):
            gates = gates.detach().cpu().reshape(-1).tolist()
        flags = parse_configuration(list(gates), self.n_stages)
        self._skip = [not g for g in flags]
        self._sync_norms()
        return self

    def sample_gates(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw ONE gate setting b_s ~ Bernoulli(p_s) for the whole mini-batch and apply it.

        One sample per mini-batch (Gated Depth, eq. (2)-(4)), not per sample: the batch then runs
        one sub-network, which keeps batch-norm statistics and compute coherent. Under data
        parallelism sample on one rank and broadcast, then call :meth:`set_gates`.

        **Arguments:** `generator`: optional CPU `torch.Generator` for reproducibility.

        **Returns:** `(S,)` bool tensor of the gates drawn (True = on).
        """
        self._require_gated("sample_gates")
        b = torch.bernoulli(self.gate_probs, generator=generator).bool()
        self.set_gates(b)
        return b

    def _sync_norms(self):
        """Point every mandatory block at the norm set of its stage's current flag."""
        for s, blocks in enumerate(self.stage_blocks()):
            for blk in blocks[: self._n_mandatory[s]]:
                if getattr(blk, "has_skip_norm", False):
                    blk.use_skip_norm = self._skip[s] if self.gated else False

    def _calibrating(self) -> bool:
        # Gated Depth: only the all-on configuration is calibrated, and only at inference.
        return self.gated and self.calibrate and not self.training and not any(self._skip)

    # ------------------------------------------------------------------ plan and executor
    def _plan(self) -> list[_Step]:
        steps, k0 = [], 0
        calibrating = self._calibrating()
        for s, blocks in enumerate(self.stage_blocks()):
            n, n_m = len(blocks), self._n_mandatory[s]
            skip = self.gated and self._skip[s]
            calib = calibrating and n_m < n
            p = float(self.gate_probs[s])
            for j, blk in enumerate(blocks):
                if skip and j >= n_m:
                    continue
                steps.append(_Step(blk, s, k0 + j, calib and j == n_m, calib and j == n - 1, p))
            k0 += n
        return steps

    def _has_stem_exit(self, plan) -> bool:
        return self.exits_mode == "shared" or len(plan) == 0

    def _exit_logits(self, h: Tensor, stage: int, index: int | None, is_last: bool) -> Tensor:
        if is_last:
            return self._forward_head(h)
        if self.exits_mode == "shared":
            return self._shared_exit(h, stage)
        return self.exits[index](h)

    def _run(self, x: Tensor, visit=None):
        """Run the current configuration; `visit(pos, h, logits, is_last)` is called at every exit
        and may return the indices of the samples to keep (the rest leave the batch)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}: input must be floating point, got {x.dtype}")
        self._check_input(x)
        plan = self._plan()
        h = self._forward_stem(x)
        hb = None
        pos = 0

        def exit_here(h, stage, index, is_last):
            nonlocal pos, hb
            keep = visit(pos, h, self._exit_logits(h, stage, index, is_last), is_last)
            pos += 1
            if keep is not None:
                h = h.index_select(0, keep)
                if hb is not None:
                    hb = hb.index_select(0, keep)
            return h

        if visit is not None and self._has_stem_exit(plan):
            h = exit_here(h, -1, None, len(plan) == 0)
        for i, step in enumerate(plan):
            if h.shape[0] == 0 and x.shape[0]:  # every sample has left at an exit
                return h
            if step.calib_start:
                hb = h
            h = step.block(h)
            if step.calib_end:
                # Gated Depth calibration, read as: h_s = h_b + p_s (Gated_s(h_b) - h_b).
                h = hb + step.prob * (h - hb)
                hb = None
            if visit is not None:
                h = exit_here(h, step.stage, step.index, i == len(plan) - 1)
        return h

    # ------------------------------------------------------------------ exits: metadata
    def exit_depths(self) -> list[int]:
        """Block depths of the exits of the current configuration (0 = stem output)."""
        plan = self._plan()
        d = [0] if self._has_stem_exit(plan) else []
        return d + [s.index + 1 for s in plan]

    def exit_costs(self, input_shape) -> list[int]:
        """Cumulative multiply-adds (conv/linear/attention products, heads excluded) of the
        backbone up to each exit of the current configuration, for an input of `input_shape`
        (the batch dimension, if given, is ignored: costs are per sample)."""
        shape = tuple(input_shape)
        if len(shape) == self._input_ndim:
            shape = shape[1:]
        total, shape = self._stem_macs(shape)
        plan = self._plan()
        out = [total] if self._has_stem_exit(plan) else []
        for step in plan:
            m, shape = step.block.macs(shape)
            total += m
            out.append(total)
        return out

    def macs(self, input_shape) -> int:
        """Backbone multiply-adds of the current configuration plus the final head, per sample."""
        shape = tuple(input_shape)
        if len(shape) == self._input_ndim:
            shape = shape[1:]
        total, shape = self._stem_macs(shape)
        for step in self._plan():
            m, shape = step.block.macs(shape)
            total += m
        return total + self._head_macs(shape)

    # ------------------------------------------------------------------ forwards
    def forward(self, x: Tensor):
        """Logits; with exits on, `(logits, DepthTrajectory)` with one head output per exit.

        The trajectory's depths are block indices (0 = stem), its cost the cumulative
        multiply-adds of :meth:`exit_costs`; its last output is the model's own head output.
        """
        if self.exits_mode is None:
            return self._forward_head(self._run(x))
        return self.forward_trajectory(x, kind="block")

    def forward_trajectory(self, x: Tensor, kind: str = "block"):
        """`(logits, DepthTrajectory)` over the exits of the current configuration.

        **Arguments:** `x`; `kind`: `"block"` (depths = block indices, 0 = stem) or `"cost"`
        (depths = cumulative multiply-adds per sample of :meth:`exit_costs`). The cost field
        holds the multiply-adds either way.

        **Returns:** the head logits and the trajectory (its last output equals the logits).
        """
        if self.exits_mode is None:
            raise ValueError("forward_trajectory: the model has no exits; build it with "
                             "exits='per_block' or exits='shared'")
        if kind not in ("block", "cost"):
            raise ValueError(f"forward_trajectory: kind must be 'block' or 'cost', got {kind!r}")
        outs = []

        def visit(pos, h, logits, is_last):
            outs.append(logits)
            return None

        self._run(x, visit)
        logits = outs[-1]
        # At least float32: under autocast the logits may be float16, where a multiply-add
        # count of a few G overflows.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        cost = torch.tensor(self.exit_costs(x.shape), dtype=torch.float64, device=logits.device)
        cost = cost.to(dtype)
        depths = cost if kind == "cost" else torch.tensor(
            self.exit_depths(), dtype=dtype, device=logits.device)
        traj = DepthTrajectory(depths=depths, outputs=torch.stack(outs, dim=1), cost=cost,
                               kind=kind)
        return logits, traj

    def forward_early_exit(self, x: Tensor, rule) -> tuple[Tensor, Tensor]:
        """Per-sample early exit with batch compaction (see :func:`early_exit`)."""
        return early_exit(self, x, rule)


def early_exit(model: DepthNet, x: Tensor, rule) -> tuple[Tensor, Tensor]:
    """Run `model` on `x`, letting each sample leave at the first exit where `rule` stops it.

    After every exit the rule is evaluated on the samples still in the batch
    (``rule.should_stop(depth (b,), state, logits)``); the samples that stop have their logits
    written to the output and are removed from the batch with ``index_select``, so the later
    blocks run on fewer samples. Samples that never stop leave at the last exit (the model's
    head). In eval mode the result of every sample equals running it alone; in training mode
    batch norm would see the shrinking batch, so use eval mode.

    **Arguments:**

    - `model`: a :class:`DepthNet` built with `exits="per_block"` or `"shared"`.
    - `x`: input batch.
    - `rule`: a memoryless :class:`~odedepth.stopping.StoppingRule` (e.g. `MaxProbability`,
      `Entropy`, `FixedDepth`); history-dependent rules (`Patience`) need the whole trajectory
      and are refused.

    **Returns:** `(logits (batch, classes), exit_index (batch,))`, where `exit_index` indexes
    :meth:`DepthNet.exit_depths` of the current configuration.
    """
    if not isinstance(model, DepthNet):
        raise TypeError(f"early_exit: expected an odedepth model, got {type(model).__name__}")
    if model.exits_mode is None:
        raise ValueError("early_exit: the model has no exits; build it with exits='per_block' or "
                         "exits='shared'")
    if not hasattr(rule, "should_stop"):
        raise TypeError(f"early_exit: rule must be a StoppingRule, got {type(rule).__name__}")
    if not getattr(rule, "memoryless", True):
        raise ValueError(f"early_exit: {type(rule).__name__} depends on the history of a "
                         "trajectory; use rule.stop_index on model(x)[1] instead")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError("early_exit: x must be a batched tensor")
    batch = x.shape[0]
    if batch == 0:
        raise ValueError("early_exit: empty batch")
    depths = model.exit_depths()
    idx = torch.arange(batch, device=x.device)
    exit_index = torch.full((batch,), -1, dtype=torch.long, device=x.device)
    pieces_idx, pieces_out = [], []

    def visit(pos, h, logits, is_last):
        nonlocal idx
        if is_last:
            stop = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        else:
            d = torch.full((logits.shape[0],), float(depths[pos]), dtype=logits.dtype,
                           device=logits.device)
            stop = rule.should_stop(d, h, logits)
            if stop.shape != (logits.shape[0],) or stop.dtype != torch.bool:
                raise ValueError(f"early_exit: rule.should_stop must return a ({logits.shape[0]},)"
                                 f" bool tensor, got {stop.dtype} {tuple(stop.shape)}")
        sel = stop.nonzero().squeeze(1)
        if sel.numel():
            pieces_idx.append(idx[sel])
            pieces_out.append(logits[sel])
            exit_index[idx[sel]] = pos
        if sel.numel() == 0:
            return None
        keep = (~stop).nonzero().squeeze(1)
        idx = idx[keep]
        return keep

    model._run(x, visit)
    all_idx = torch.cat(pieces_idx)
    all_out = torch.cat(pieces_out)
    out = all_out.new_zeros(batch, *all_out.shape[1:]).index_copy(0, all_idx, all_out)
    return out, exit_index
