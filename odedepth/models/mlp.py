"""Residual MLP: the smallest member of the family, h_{k+1} = h_k + alpha F_k(h_k) on vectors.

It exists for the analysis side of the project (residual expansion, the Euler bridge to
continuous depth, stage-cost pruning on regression problems), where closed forms are available:
with `hidden=None, activation=None, norm=False, bias=False` every block is h + alpha A_k h and
the network is exactly prod_k (I + alpha A_k) (Dherin & Munn, arXiv 2510.03470).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import DepthNet
from .layers import BranchScale, drop_path, norm_or_identity
from .options import check_exits, config_value, resolve_branch_scale

__all__ = ["ResidualMLP", "ResidualMLPBlock"]

_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, None: nn.Identity}


class ResidualMLPBlock(nn.Module):
    """h + drop_path(alpha F(h)), F(h) = fc2(act(fc1(norm1(h)))) or act(fc1(norm1(h)))."""

    def __init__(self, dim, hidden=None, activation="relu", *, norm=True, skip_norm=False,
                 bias=True, alpha=1.0, learnable=False, drop_path_rate=0.0):
        super().__init__()
        self.norm1 = norm_or_identity(lambda: nn.LayerNorm(dim), norm)
        self.has_skip_norm = bool(skip_norm)
        if skip_norm:
            self.norm1_skip = norm_or_identity(lambda: nn.LayerNorm(dim), norm)
        self.use_skip_norm = False
        self.fc1 = nn.Linear(dim, dim if hidden is None else hidden, bias=bias)
        self.act = _ACTS[activation]()
        self.fc2 = None if hidden is None else nn.Linear(hidden, dim, bias=bias)
        self.branch_scale = BranchScale(alpha, learnable)
        self.drop_path = float(drop_path_rate)

    def branch(self, h: Tensor) -> Tensor:
        out = self.act(self.fc1((self.norm1_skip if self.use_skip_norm else self.norm1)(h)))
        return out if self.fc2 is None else self.fc2(out)

    def forward(self, h: Tensor) -> Tensor:
        return h + drop_path(self.branch_scale(self.branch(h)), self.drop_path, self.training)

    def branch_layers(self):
        return (self.fc1 if self.fc2 is None else self.fc2), None

    def macs(self, shape):
        m = self.fc1.in_features * self.fc1.out_features
        if self.fc2 is not None:
            m += self.fc2.in_features * self.fc2.out_features
        return m, shape


class ResidualMLP(DepthNet):
    """Residual MLP on `(batch, in_chans)` inputs with the shared depth options.

    **Arguments:**

    - `dim`: width of the residual stream; `layers`: blocks per stage (a stage is what a gate
      switches), e.g. `[4]` or `[2, 2]`.
    - `in_chans`: input features (a linear stem maps them to `dim`; with `stem=False` they must
      equal `dim` and the input is the initial state h_0).
    - `num_classes`: outputs of the linear head; None for no head (the output is h_L).
    - `hidden`: hidden width of each branch (None: one linear layer per branch);
      `activation`: "relu", "tanh", "gelu" or None; `bias`: biases in the branch layers.
    - `branch_scale`, `norm` (pre-norm LayerNorm in every branch), `exits`, `gated`,
      `gate_probs`, `calibrate`, `split`, `drop_path`: as for :class:`ResNet`
      (`L` = number of blocks).
    """

    _input_ndim = 2

    def __init__(self, dim=16, layers=(4,), *, in_chans=None, num_classes=None, stem=True,
                 hidden=None, activation="relu", bias=True, branch_scale=1.0, norm=True,
                 exits=None, gated=False, gate_probs=None, calibrate=True, split=None,
                 drop_path=0.0, name="resmlp"):
        super().__init__()
        layers = [int(n) for n in layers]
        if int(dim) != dim or dim < 1 or not layers or any(n < 0 for n in layers):
            raise ValueError(f"ResidualMLP: need dim >= 1 and non-negative layers, got dim={dim}, "
                             f"layers={layers}")
        if not 0.0 <= float(drop_path) < 1.0:
            raise ValueError(f"ResidualMLP: drop_path must lie in [0, 1), got {drop_path}")
        if activation not in _ACTS:
            raise ValueError(f"ResidualMLP: activation must be one of {list(_ACTS)}, got "
                             f"{activation!r}")
        in_chans = dim if in_chans is None else int(in_chans)
        if not stem and in_chans != dim:
            raise ValueError(f"ResidualMLP: stem=False needs in_chans == dim ({dim}), got {in_chans}")
        n_blocks = sum(layers)
        alpha, learnable = resolve_branch_scale(branch_scale, max(n_blocks, 1))
        self.config = dict(name=name, dim=int(dim), layers=layers, in_chans=in_chans,
                           num_classes=num_classes, stem=bool(stem), hidden=hidden,
                           activation=activation, bias=bool(bias), branch_scale=branch_scale,
                           norm=bool(norm), exits=exits, gated=bool(gated),
                           gate_probs=config_value(gate_probs), calibrate=bool(calibrate),
                           split=config_value(split), drop_path=float(drop_path))
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.stem = nn.Linear(in_chans, dim) if stem else nn.Identity()
        n_mand = self._mandatory_counts(layers, gated, split)
        k = 0
        self.stages = nn.ModuleList()
        for s, n in enumerate(layers):
            blocks = []
            for j in range(n):
                blocks.append(ResidualMLPBlock(
                    dim, hidden, activation, norm=norm,
                    skip_norm=gated and n_mand[s] < n and j < n_mand[s], bias=bias, alpha=alpha,
                    learnable=learnable, drop_path_rate=float(drop_path) * k / max(n_blocks - 1, 1)))
                k += 1
            self.stages.append(nn.Sequential(*blocks))
        self.head = nn.Identity() if num_classes is None else nn.Linear(dim, int(num_classes))
        if check_exits(exits) == "per_block":
            self.exits = nn.ModuleList(
                nn.Identity() if num_classes is None else nn.Linear(dim, int(num_classes))
                for _ in range(max(n_blocks - 1, 0)))
        self._init_depth(n_mandatory=n_mand, gated=gated, gate_probs=gate_probs, exits=exits,
                         calibrate=calibrate)

    def stage_blocks(self):
        return [list(stage) for stage in self.stages]

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_chans:
            raise ValueError(f"ResidualMLP: expected input of shape (batch, {self.in_chans}), got "
                             f"{tuple(x.shape)}")

    def _forward_stem(self, x):
        return self.stem(x)

    def _forward_head(self, h):
        return self.head(h)

    def _shared_exit(self, h, stage):
        return self.head(h)  # one width throughout: no projections to go through

    def _stem_macs(self, shape):
        dim = self.config["dim"]
        m = self.in_chans * dim if isinstance(self.stem, nn.Linear) else 0
        return m, (dim,)

    def _head_macs(self, shape):
        return 0 if self.num_classes is None else self.config["dim"] * int(self.num_classes)
