"""ResNet-18/34/50/101 with the torchvision v1.5 layout, plus depth options.

With every option off the parameter names, shapes and counts are those of torchvision
(`conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0/1, fc`; ResNet-50: 25,557,032
parameters), so torchvision checkpoints load with ``load_state_dict(strict=True)``. Options add
parameters only when they are on (skip-aware BN copies `bn*_skip` in mandatory blocks of gated
models, `*.branch_scale.gain` for ReZero, `exits.*` heads); see
:func:`odedepth.models.load_torchvision_state_dict` to fill them from a plain checkpoint.

References: He et al., "Deep Residual Learning", CVPR 2016; torchvision v1.5 bottleneck (stride
on the 3x3 convolution, Goyal et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DepthNet
from .layers import BranchScale, conv_macs, drop_path, norm_or_identity
from .options import check_exits, config_value, resolve_branch_scale

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "ShortcutOnly"]

_STEMS = ("imagenet", "cifar")


def _bn(c):
    return lambda: nn.BatchNorm2d(c)


class _ResidualBlock(nn.Module):
    """Common forward logic: out = relu(shortcut(x) + drop_path(alpha * branch(x)))."""

    has_skip_norm = False

    def _init_common(self, norms, skip_norm, norm, alpha, learnable, drop_path_rate):
        for name, c in norms:
            setattr(self, name, norm_or_identity(_bn(c), norm))
        self.has_skip_norm = bool(skip_norm)
        if skip_norm:
            # ADN skip-aware BN: a second set, used when this block's stage skips its
            # refinement sub-path (the statistics of the two sub-networks differ).
            for name, c in norms:
                setattr(self, name + "_skip", norm_or_identity(_bn(c), norm))
        self.use_skip_norm = False
        self.branch_scale = BranchScale(alpha, learnable)
        self.drop_path = float(drop_path_rate)

    def _norm(self, name: str) -> nn.Module:
        return getattr(self, name + "_skip" if self.use_skip_norm else name)

    def forward(self, x: Tensor) -> Tensor:
        out = drop_path(self.branch_scale(self.branch(x)), self.drop_path, self.training)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def shortcut_macs(self, shape):
        if self.downsample is None:
            return 0, shape
        return conv_macs(self.downsample[0], shape)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, norm=True,
                 skip_norm=False, alpha=1.0, learnable=False, drop_path_rate=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self._init_common([("bn1", planes), ("bn2", planes)], skip_norm, norm, alpha,
                          learnable, drop_path_rate)

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self._norm("bn1")(self.conv1(x)))
        return self._norm("bn2")(self.conv2(out))

    def branch_layers(self):
        """(last conv, last norm) of the branch: what pruning inspects."""
        return self.conv2, self.bn2

    def macs(self, shape):
        m1, s1 = conv_macs(self.conv1, shape)
        m2, s2 = conv_macs(self.conv2, s1)
        return m1 + m2 + self.shortcut_macs(shape)[0], s2


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (stride here: torchvision v1.5) -> 1x1 with expansion 4 (ResNet-50/101)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, norm=True,
                 skip_norm=False, alpha=1.0, learnable=False, drop_path_rate=0.0):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self._init_common([("bn1", width), ("bn2", width), ("bn3", planes * 4)], skip_norm,
                          norm, alpha, learnable, drop_path_rate)

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self._norm("bn1")(self.conv1(x)))
        out = self.relu(self._norm("bn2")(self.conv2(out)))
        return self._norm("bn3")(self.conv3(out))

    def branch_layers(self):
        return self.conv3, self.bn3

    def macs(self, shape):
        m1, s1 = conv_macs(self.conv1, shape)
        m2, s2 = conv_macs(self.conv2, s1)
        m3, s3 = conv_macs(self.conv3, s2)
        return m1 + m2 + m3 + self.shortcut_macs(shape)[0], s3


class ShortcutOnly(nn.Module):
    """A pruned downsampling block: its branch vanished, its projection stays.

    Output relu(downsample(x)), i.e. the block with a zero branch. Keeps the attribute name
    `downsample` so the state_dict keys are those of the original block's shortcut.
    """

    has_skip_norm = False

    def __init__(self, downsample: nn.Module):
        super().__init__()
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.downsample(x))

    def macs(self, shape):
        return conv_macs(self.downsample[0], shape)


class _ExitHead(nn.Module):
    """Per-block exit: global average pool + linear."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h.mean(dim=(2, 3)))


class ResNet(DepthNet):
    """ResNet with torchvision layout and depth options (branch scale, exits, gates, pruning).

    **Arguments:**

    - `block`: `"basic"` or `"bottleneck"`; `layers`: blocks per stage, e.g. `[3, 4, 6, 3]`
      (0 allowed for a stage emptied by pruning).
    - `num_classes`, `in_chans`: classifier outputs and input channels.
    - `stem`: `"imagenet"` (7x7/2 convolution + 3x3/2 max-pool) or `"cifar"` (3x3/1, no pool).
    - `channels`: per-stage widths (torchvision: `(64, 128, 256, 512)`; the stem has
      `channels[0]`). Smaller widths give fast test models.
    - `branch_scale`: 1, a positive float, `"1/sqrt(L)"`, `"1/L"` (L = number of blocks) or
      `"rezero"` (learnable gain per block initialised at 0).
    - `norm`: False replaces every BatchNorm by an identity (normalisation-free variant).
    - `exits`: None, `"per_block"` (avgpool + linear after every block, the last one is `fc`) or
      `"shared"` (the state after block k of stage s goes through the downsample projections of
      stages s+1..S, then avgpool + fc; the stem output has an exit too). With exits the forward
      returns `(logits, DepthTrajectory)`.
    - `gated`: split every stage into mandatory and skippable blocks (ADN rule, or `split`),
      with skip-aware BN copies `bn*_skip` in the mandatory blocks of stages that have
      skippable ones. A downsampling first block is always mandatory.
    - `gate_probs`: per-stage keep probabilities p_s (default 0.9 ... 0.5 linear over stages).
    - `calibrate`: at inference, the all-on configuration computes h = h_b + p_s (G(h_b) - h_b)
      per stage (Gated Depth calibration); set False for ADN-style training.
    - `split`: explicit mandatory counts per stage (overrides the ADN rule).
    - `shortcut_only`: per stage, whether its first block is a pruned :class:`ShortcutOnly`.
    - `drop_path`: stochastic-depth rate, linear over blocks up to this value (training only).
    - `name`: registry name, recorded in :attr:`config`.
    """

    _input_ndim = 4

    def __init__(self, block="bottleneck", layers=(3, 4, 6, 3), *, num_classes=1000, in_chans=3,
                 stem="imagenet", channels=(64, 128, 256, 512), branch_scale=1.0, norm=True,
                 exits=None, gated=False, gate_probs=None, calibrate=True, split=None,
                 shortcut_only=None, drop_path=0.0, name="resnet"):
        super().__init__()
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}.get(block)
        if block_cls is None:
            raise ValueError(f"ResNet: block must be 'basic' or 'bottleneck', got {block!r}")
        layers = [int(n) for n in layers]
        channels = [int(c) for c in channels]
        if len(layers) == 0 or any(n < 0 for n in layers):
            raise ValueError(f"ResNet: layers must be non-negative block counts, got {layers}")
        if len(channels) != len(layers) or any(c < 1 for c in channels):
            raise ValueError(f"ResNet: channels must give one positive width per stage "
                             f"({len(layers)}), got {channels}")
        if stem not in _STEMS:
            raise ValueError(f"ResNet: stem must be one of {_STEMS}, got {stem!r}")
        for arg, v in (("num_classes", num_classes), ("in_chans", in_chans)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"ResNet: {arg} must be a positive integer, got {v!r}")
        if not 0.0 <= float(drop_path) < 1.0:
            raise ValueError(f"ResNet: drop_path must lie in [0, 1), got {drop_path}")
        shortcut_only = [False] * len(layers) if shortcut_only is None else [
            bool(s) for s in shortcut_only]
        if len(shortcut_only) != len(layers):
            raise ValueError(f"ResNet: shortcut_only needs one flag per stage, got {shortcut_only}")
        n_blocks = sum(layers)
        alpha, learnable = resolve_branch_scale(branch_scale, max(n_blocks, 1))
        self.config = dict(name=name, block=block, layers=layers, num_classes=int(num_classes),
                           in_chans=int(in_chans), stem=stem, channels=channels,
                           branch_scale=branch_scale, norm=bool(norm), exits=exits,
                           gated=bool(gated),
                           gate_probs=config_value(gate_probs),
                           calibrate=bool(calibrate), split=None if split is None else list(split),
                           shortcut_only=shortcut_only if any(shortcut_only) else None,
                           drop_path=float(drop_path))
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.norm = bool(norm)

        # Stem (torchvision names conv1/bn1/relu/maxpool).
        c0 = channels[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, c0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, c0, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = norm_or_identity(_bn(c0), norm)
        self.relu = nn.ReLU(inplace=True)

        # Which first blocks change the shape (they must stay mandatory when gated).
        inplanes, shape_change = c0, []
        for s, (n, c) in enumerate(zip(layers, channels)):
            stride = 1 if s == 0 else 2
            shape_change.append(n > 0 and (stride != 1 or inplanes != c * block_cls.expansion))
            if n > 0:
                inplanes = c * block_cls.expansion
        n_mand = self._mandatory_counts(layers, gated, split,
                                        min_mandatory=[1 if c else 0 for c in shape_change])

        inplanes, k = c0, 0
        stage_out = []
        for s, (n, c) in enumerate(zip(layers, channels)):
            stride = 1 if s == 0 else 2
            has_skippable = gated and n_mand[s] < n
            blocks = []
            for j in range(n):
                ds = None
                st = stride if j == 0 else 1
                if st != 1 or inplanes != c * block_cls.expansion:
                    ds = nn.Sequential(
                        nn.Conv2d(inplanes, c * block_cls.expansion, 1, st, bias=False),
                        norm_or_identity(_bn(c * block_cls.expansion), norm))
                if j == 0 and shortcut_only[s]:
                    if ds is None:
                        raise ValueError(f"ResNet: stage {s} has no projection, so its first "
                                         "block cannot be shortcut-only")
                    blocks.append(ShortcutOnly(ds))
                else:
                    rate = float(drop_path) * k / max(n_blocks - 1, 1)
                    blocks.append(block_cls(
                        inplanes, c, st, ds, norm=norm,
                        skip_norm=has_skippable and j < n_mand[s], alpha=alpha,
                        learnable=learnable, drop_path_rate=rate))
                inplanes = c * block_cls.expansion
                k += 1
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            stage_out.append(inplanes)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes)
        self._stage_out = stage_out

        if check_exits(exits) == "per_block":
            heads = [_ExitHead(stage_out[s], num_classes)
                     for s, n in enumerate(layers) for _ in range(n)]
            self.exits = nn.ModuleList(heads[:-1])
        self._init_weights()
        self._init_depth(n_mandatory=n_mand, gated=gated, gate_probs=gate_probs, exits=exits,
                         calibrate=calibrate)

    def _init_weights(self):
        # He initialisation for convolutions, unit/zero BN affine: the torchvision convention.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ DepthNet hooks
    def stage_blocks(self):
        return [list(getattr(self, f"layer{s + 1}")) for s in range(len(self.config["layers"]))]

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ResNet: expected input of shape (batch, {self.in_chans}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"ResNet: empty spatial size {tuple(x.shape[2:])}")

    def _forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _forward_head(self, h: Tensor) -> Tensor:
        return self.fc(self.avgpool(h).flatten(1))

    def _later_projections(self, stage: int) -> list[nn.Module]:
        return [blocks[0].downsample for blocks in self.stage_blocks()[stage + 1:]
                if blocks and blocks[0].downsample is not None]

    def _shared_exit(self, h: Tensor, stage: int) -> Tensor:
        # Stage-cost readout (Püttschneider et al.): later non-trivial skips, then the head.
        projections = self._later_projections(stage)
        if not self.training and not torch.is_grad_enabled():
            fast = _pooled_projection(h, projections)
            if fast is not None:
                return self.fc(fast)
        for ds in projections:
            h = ds(h)
        return self._forward_head(h)

    def _stem_macs(self, shape):
        if len(shape) != 3:
            raise ValueError(f"ResNet: input shape must be (C, H, W) or (B, C, H, W), got {shape}")
        m, shape = conv_macs(self.conv1, shape)
        if isinstance(self.maxpool, nn.MaxPool2d):
            c, h, w = shape
            shape = (c, (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1)
        return m, shape

    def _head_macs(self, shape) -> int:
        return self.fc.in_features * self.fc.out_features


def _pooled_projection(h: Tensor, projections) -> Tensor | None:
    """avgpool(P_S(...P_1(h))) for 1x1 strided projections with eval-mode BN, computed cheaply.

    A 1x1 convolution with stride s followed by an eval-mode BatchNorm is a per-pixel affine map
    applied to ``h[..., ::s, ::s]``; affine maps commute with averaging, so the pooled result is
    the chain of affine maps applied to the mean of ``h[..., ::S, ::S]`` (S = product of the
    strides). This turns the exits of early-exit inference from convolutions over full feature
    maps into a few small matrix products. Returns None when a module does not fit the pattern.
    """
    stride, maps = 1, []
    for ds in projections:
        if not isinstance(ds, nn.Sequential) or len(ds) != 2:
            return None
        conv, bn = ds[0], ds[1]
        if (not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1) or conv.padding != (0, 0)
                or conv.groups != 1 or conv.dilation != (1, 1)
                or conv.stride[0] != conv.stride[1]):
            return None
        if isinstance(bn, nn.BatchNorm2d):
            if bn.training or bn.running_mean is None:
                return None
        elif not isinstance(bn, nn.Identity):
            return None
        stride *= conv.stride[0]
        maps.append((conv, bn))
    v = h[:, :, ::stride, ::stride].mean(dim=(2, 3))
    for conv, bn in maps:
        v = F.linear(v, conv.weight[:, :, 0, 0], conv.bias)
        if isinstance(bn, nn.BatchNorm2d):
            v = F.batch_norm(v, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                             bn.eps)
    return v
