"""Neural stopping decisions trained backward in time (Becker, Cheridito & Jentzen 2019).

At each time `t < T - 1` a small network `F_t: R^k -> (0, 1)` is trained to maximise the expected
reward of its relaxed decision,

    max  E[ r_t F_t(x_t) + c_{t+1} (1 - F_t(x_t)) ],

where `c_{t+1}` is the realised reward of the hard decisions `f_s = 1{F_s >= 1/2}` already fitted
for `s > t` (the "cash flow", as in Longstaff--Schwartz, but with the decision itself learned
instead of a continuation value). Then `f_t` replaces `F_t` and training moves to `t - 1`. We use
one network per time step, as the paper does. The paper initialises each network from the one of
the next time; that is `warm_start=True` here, but not the default: when nearly every path stops
at the later times (typical of depth, where late layers gain little) the copied sigmoid is
saturated, its gradients vanish and the earlier decisions stay stuck at "stop" (we saw every path
stop at time 0 on the diminishing-returns test problem). By default each time gets a fresh,
seeded initialisation. The decision depends on the features only: include the reward among the
features if it is observable.

Reference: S. Becker, P. Cheridito, A. Jentzen, "Deep optimal stopping", J. Machine Learning
Research 20 (2019) 1--25.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._checks import check_paths, check_positive_float, check_positive_int, resolve_rewards
from .policy import StoppingFit, StoppingPolicy

__all__ = ["neural", "NeuralPolicy"]


def _mlp(k: int, hidden: int, layers: int) -> nn.Module:
    mods, width = [], k
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods)


class NeuralPolicy(StoppingPolicy):
    """Stop at `t` where the network of time `t` outputs a logit `>= 0` (probability >= 1/2).

    **Attributes:** `nets` (list of `n_times - 1` modules, `None` where the features were
    constant across training paths and the decision is the constant `const[t]`), `shift`, `scale`
    (per-time standardisation of the inputs).
    """

    def __init__(self, nets, const, shift, scale, n_features):
        self.nets = nets
        self.const = const
        self.shift = shift
        self.scale = scale
        self.n_times = len(nets) + 1
        self.n_features = n_features

    def logits(self, time_index: int, features_t: Tensor) -> Tensor:
        """`(n,)` logit of the stop decision at `time_index` (before the last time)."""
        t = self._check_time(time_index)
        if t == self.n_times - 1:
            raise ValueError("NeuralPolicy.logits: no network at the last time (always stop)")
        return self._logits(t, self._check_features_t(features_t))

    @torch.no_grad()
    def _logits(self, t, x):
        net = self.nets[t]
        if net is None:
            v = 1.0 if self.const[t] else -1.0
            return torch.full((x.shape[0],), v, dtype=x.dtype, device=x.device)
        p = next(net.parameters())
        z = (x.to(p.dtype) - self.shift[t].to(p.device, p.dtype)) / self.scale[t].to(p.device,
                                                                                     p.dtype)
        was = net.training
        net.eval()
        out = net(z.to(p.device)).squeeze(-1).to(x.device)
        net.train(was)
        return out

    def _score(self, t, x, r):
        return self._logits(t, x)


def neural(features: Tensor, rewards: Tensor | None = None, *, reward_fn: Callable | None = None,
           hidden: int | None = None, layers: int = 2, epochs: int = 10, batch_size: int = 4096,
           lr: float = 1e-3, seed: int = 0, warm_start: bool = False,
           dtype=torch.float32) -> StoppingFit:
    """Fit neural stopping decisions backward in time (Becker, Cheridito & Jentzen 2019).

    **Arguments:**

    - `features`: `(n_paths, n_times, k)` (Markov) features; `(n_paths, n_times)` means `k = 1`.
    - `rewards`: `(n_paths, n_times)` discounted rewards, any sign; or `reward_fn(features)`.
    - `hidden`: width of the hidden layers (default `k + 40`, the paper's choice), `layers`:
      number of hidden layers (default 2, as in the paper).
    - `epochs`: passes over the paths for the network of each time; `batch_size`; `lr` (Adam).
    - `seed`: seeds initialisation and shuffling (the global RNG is left untouched).
    - `warm_start`: initialise each network from the next time's (the paper's choice; faster,
      but can get stuck when the next decision is saturated, see the module docstring).
    - `dtype`: dtype of the networks.

    **Returns:** :class:`StoppingFit` with in-sample `value` and `stop_index` and a
    :class:`NeuralPolicy`. `info["loss"]` holds the final training objective per time.
    """
    who = "neural"
    rewards = resolve_rewards(features, rewards, reward_fn, who)
    features, rewards = check_paths(features, rewards, who)
    n, T, k = features.shape
    hidden = check_positive_int(k + 40 if hidden is None else hidden, "hidden", who)
    layers = check_positive_int(layers, "layers", who, minimum=0)
    epochs = check_positive_int(epochs, "epochs", who)
    batch_size = check_positive_int(batch_size, "batch_size", who)
    lr = check_positive_float(lr, "lr", who)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{who}: dtype must be a floating torch.dtype, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{who}: seed must be an int, got {seed!r}")
    dev = features.device
    x = features.to(dtype)
    r = rewards.to(torch.float64)
    shift = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False)
    const_feat = (scale <= 1e-12 * (1 + shift.abs())).all(dim=1)     # (T,)
    scale = torch.where(scale > 1e-12 * (1 + shift.abs()), scale, torch.ones_like(scale))
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _mlp(k, hidden, layers).to(device=dev, dtype=dtype)
    nets: list = [None] * (T - 1)
    const = [False] * (T - 1)
    losses = [float("nan")] * (T - 1)
    idx = torch.full((n,), T - 1, dtype=torch.long, device=dev)
    cash = r[:, T - 1].clone()
    for t in range(T - 2, -1, -1):
        if bool(const_feat[t]):
            # identical features on every path (e.g. a common start): the best constant decision
            stop_const = bool(r[:, t].mean() >= cash.mean())
            const[t] = stop_const
            stop = torch.full((n,), stop_const, dtype=torch.bool, device=dev)
        else:
            if warm_start:
                net = copy.deepcopy(net)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed + 1 + t)
                    net = _mlp(k, hidden, layers).to(device=dev, dtype=dtype)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            z = (x[:, t] - shift[t]) / scale[t]
            gain = (r[:, t] - cash).to(dtype)   # reward of stopping minus that of going on
            net.train()
            for _ in range(epochs):
                perm = torch.randperm(n, generator=gen, device=dev)
                for b in range(0, n, batch_size):
                    sel = perm[b: b + batch_size]
                    p = torch.sigmoid(net(z[sel]).squeeze(-1))
                    # -E[r F + c (1 - F)] up to the constant -E[c]
                    loss = -(gain[sel] * p).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            net.eval()
            with torch.no_grad():
                logit = net(z).squeeze(-1)
                losses[t] = float(-(gain * torch.sigmoid(logit)).mean() - cash.mean())
            stop = logit >= 0
            nets[t] = net
        cash = torch.where(stop, r[:, t], cash)
        idx = torch.where(stop, torch.full_like(idx, t), idx)
    policy = NeuralPolicy(nets, const, shift, scale, k)
    return StoppingFit(float(cash.mean()), idx, policy, {"loss": losses})
