"""Exact backward induction on finite Markov chains and lattices.

For a chain with states `s` at times `t = 0, ..., T - 1`, transition probabilities
`P_t(s, s')` and discounted rewards `g_t(s)`, the value (Snell envelope) is

    V_{T-1} = g_{T-1},   V_t = max(g_t, C_t),   C_t = P_t V_{t+1},

and stopping where `g_t >= C_t` is optimal (Snell 1952; Chow, Robbins & Siegmund, "Great
Expectations: the theory of optimal stopping", 1971, ch. 3). State spaces may change size from one
time to the next (a binomial lattice has `t + 1` nodes at step `t`). A reward of `-inf` marks a
state and time where stopping is not allowed (Bermudan exercise dates on a finer lattice).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import as_float_tensor, check_positive_float, check_positive_int, describe
from .paths import PathSimulator
from .policy import StoppingPolicy

__all__ = ["backward_induction", "BackwardInductionResult", "ChainPolicy", "MarkovChain",
           "crr_lattice", "Lattice"]


class ChainPolicy(StoppingPolicy):
    """Optimal policy of a finite chain: features are state indices `(n, 1)` (floats or ints).

    **Attributes:** `stop` (list of `n_times` boolean tensors `(S_t,)`: the stopping region).
    """

    def __init__(self, stop: list[Tensor]):
        self.stop = stop
        self.n_times = len(stop)
        self.n_features = 1

    def _score(self, t, x, r):
        return self._decide(t, x, r).to(torch.float64) * 2 - 1

    def _decide(self, t, x, r):
        s = x[:, 0].round().long()
        region = self.stop[t].to(x.device)
        if (s < 0).any() or (s >= region.numel()).any():
            raise ValueError(f"ChainPolicy: state indices at time {t} must lie in "
                             f"[0, {region.numel() - 1}]")
        return region[s]


@dataclass
class BackwardInductionResult:
    """Result of :func:`backward_induction`.

    **Attributes:**

    - `value`: optimal value at time 0 from the initial state (or distribution).
    - `values`: list of `(S_t,)` optimal values per state and time.
    - `continuation`: list of `(S_t,)` values of going on optimally (`-inf` at the last time, by
      convention, since going on is impossible there).
    - `stop`: list of `(S_t,)` boolean stopping regions (`reward >= continuation`).
    - `policy`: a :class:`ChainPolicy` applying the regions to simulated state paths.
    """

    value: float
    values: list[Tensor]
    continuation: list[Tensor]
    stop: list[Tensor]
    policy: ChainPolicy


def _as_list(x, n_expected, name, who, dim):
    if isinstance(x, Tensor) or not isinstance(x, Sequence):
        t = as_float_tensor(x, name, who)
        if t.dim() == dim - 1 and n_expected is not None:
            return [t] * n_expected
        if t.dim() != dim:
            raise ValueError(f"{who}: {name} must be a tensor with {dim} dimensions or a list, got "
                             f"{describe(t)}")
        return list(t.unbind(0))
    return [as_float_tensor(v, f"{name}[{i}]", who) if not (
        isinstance(v, Tensor) and v.is_sparse) else v for i, v in enumerate(x)]


def backward_induction(transition, rewards, initial=None) -> BackwardInductionResult:
    """Exact optimal stopping of a finite Markov chain (or lattice) by backward induction.

    **Arguments:**

    - `transition`: one of
      `(S, S)` tensor (time-homogeneous chain);
      `(T - 1, S, S)` tensor, or a list of `T - 1` matrices `(S_t, S_{t+1})` (dense or sparse),
      rows summing to one;
      a callable `expect(t, v_next) -> (S_t,)` returning the conditional expectation
      `E[v_next(X_{t+1}) | X_t = s]` for every state `s` (lattices, without storing matrices).
    - `rewards`: `(T, S)` tensor or list of `T` tensors `(S_t,)`: discounted rewards of stopping,
      any sign; `-inf` forbids stopping there (not allowed at the last time); NaN is an error.
    - `initial`: `None` (state 0), a state index, or a distribution `(S_0,)` over initial
      states.

    **Returns:** :class:`BackwardInductionResult`.

    **Raises:** `ValueError` for mismatched sizes, rows that are not distributions, NaN rewards.
    """
    who = "backward_induction"
    rew = _as_list(rewards, None, "rewards", who, 2)
    T = len(rew)
    if T < 1:
        raise ValueError(f"{who}: need at least one time (n_times >= 1)")
    rew = [r.to(torch.float64).reshape(-1) for r in rew]
    for i, r in enumerate(rew):
        if torch.isnan(r).any():
            raise ValueError(f"{who}: rewards at time {i} contain NaN")
        if torch.isposinf(r).any():
            raise ValueError(f"{who}: rewards at time {i} contain +inf")
    if not torch.isfinite(rew[-1]).all():
        raise ValueError(f"{who}: rewards at the last time must be finite (stopping is forced)")
    if callable(transition) and not isinstance(transition, Tensor):
        expect = transition
    else:
        mats = _as_list(transition, T - 1, "transition", who, 3)
        if len(mats) != T - 1:
            raise ValueError(f"{who}: need n_times - 1 = {T - 1} transition matrices, got "
                             f"{len(mats)}")
        for i, P in enumerate(mats):
            if P.dim() != 2 or P.shape != (rew[i].numel(), rew[i + 1].numel()):
                raise ValueError(f"{who}: transition[{i}] must have shape "
                                 f"({rew[i].numel()}, {rew[i + 1].numel()}) to match the rewards, "
                                 f"got {tuple(P.shape)}")
            Pd = P.to_dense() if P.is_sparse else P
            ones = torch.ones(Pd.shape[0], dtype=torch.float64, device=Pd.device)
            if not torch.isfinite(Pd).all() or (Pd < 0).any() or not torch.allclose(
                    Pd.sum(1).double(), ones, atol=1e-9):
                raise ValueError(f"{who}: transition[{i}] rows must be probability "
                                 "distributions (non-negative, summing to 1)")
        mats = [P.to(torch.float64) for P in mats]

        def expect(t, v):
            return mats[t] @ v

    values = [None] * T
    cont = [None] * T
    stop = [None] * T
    values[-1] = rew[-1]
    cont[-1] = torch.full_like(rew[-1], -math.inf)
    stop[-1] = torch.ones_like(rew[-1], dtype=torch.bool)
    for t in range(T - 2, -1, -1):
        c = expect(t, values[t + 1])
        if not isinstance(c, Tensor) or c.shape != rew[t].shape:
            raise ValueError(f"{who}: the expectation at time {t} must have shape "
                             f"{tuple(rew[t].shape)}, got {describe(c)}")
        cont[t] = c
        stop[t] = rew[t] >= c
        values[t] = torch.where(stop[t], rew[t], c)
    v0 = values[0]
    if initial is None:
        value = float(v0[0])
    elif isinstance(initial, int) and not isinstance(initial, bool):
        if not 0 <= initial < v0.numel():
            raise ValueError(f"{who}: initial state {initial} out of range [0, {v0.numel() - 1}]")
        value = float(v0[initial])
    else:
        p0 = as_float_tensor(initial, "initial", who).to(torch.float64).reshape(-1)
        if p0.shape != v0.shape or (p0 < 0).any() or abs(float(p0.sum()) - 1) > 1e-6:
            raise ValueError(f"{who}: initial must be a state index or a distribution of shape "
                             f"{tuple(v0.shape)}")
        value = float(p0 @ v0)
    return BackwardInductionResult(value, values, cont, stop, ChainPolicy(stop))


class MarkovChain(PathSimulator):
    """Simulate a finite Markov chain; paths are state indices as floats `(n, n_times, 1)`.

    **Arguments:** `transition` (`(S, S)`, `(T - 1, S, S)` or a list of `(S_t, S_{t+1})` dense
    matrices); `n_times` (needed for a homogeneous `(S, S)` matrix); `initial` (state index or
    distribution over the states at time 0, default state 0).
    """

    def __init__(self, transition, n_times: int | None = None, initial=None):
        who = "MarkovChain"
        if isinstance(transition, Tensor) and transition.dim() == 2:
            T = check_positive_int(n_times, "n_times", who)
            mats = [as_float_tensor(transition, "transition", who)] * (T - 1)
        else:
            mats = _as_list(transition, None, "transition", who, 3)
            T = len(mats) + 1
            if n_times is not None and n_times != T:
                raise ValueError(f"{who}: n_times = {n_times} disagrees with {len(mats)} "
                                 "transition matrices")
        mats = [m.to(torch.float64) for m in mats]
        for i, P in enumerate(mats):
            if P.dim() != 2 or (P < 0).any() or not torch.allclose(
                    P.sum(1), torch.ones(P.shape[0], dtype=P.dtype, device=P.device), atol=1e-9):
                raise ValueError(f"{who}: transition[{i}] rows must be probability distributions")
            if i and P.shape[0] != mats[i - 1].shape[1]:
                raise ValueError(f"{who}: transition[{i}] has {P.shape[0]} rows but the previous "
                                 f"matrix has {mats[i - 1].shape[1]} columns")
        self.mats = mats
        device = mats[0].device if mats else None
        self.times = torch.arange(T, dtype=torch.float64, device=device)
        self.dim = 1
        s0 = mats[0].shape[0] if mats else 1
        if initial is None:
            initial = 0
        if isinstance(initial, int):
            if not 0 <= initial < s0:
                raise ValueError(f"{who}: initial state {initial} out of range")
            p = torch.zeros(s0, dtype=torch.float64, device=device)
            p[initial] = 1.0
        else:
            p = as_float_tensor(initial, "initial", who).to(torch.float64).reshape(-1)
            if p.numel() != s0 or (p < 0).any() or abs(float(p.sum()) - 1) > 1e-6:
                raise ValueError(f"{who}: initial must be a distribution over {s0} states")
        self.initial = p

    def _run(self, s, t0, generator):
        n = s.shape[0]
        out = torch.empty(n, self.n_times, 1, dtype=torch.float64, device=s.device)
        out[:, : t0 + 1, 0] = s[:, None].double()
        for t in range(t0, self.n_times - 1):
            s = torch.multinomial(self.mats[t][s], 1, generator=generator).squeeze(1)
            out[:, t + 1, 0] = s.double()
        return out

    def sample(self, n_paths, generator=None, antithetic=False):
        if antithetic:
            raise ValueError("MarkovChain.sample: antithetic sampling is not defined for chains")
        n = self._check_sample(n_paths, False)
        s = torch.multinomial(self.initial, n, replacement=True, generator=generator)
        return self._run(s, 0, generator)

    def sample_from(self, time_index, state, n_per_state, generator=None):
        t, s, n = self._check_from(time_index, state, n_per_state)
        return self._run(s[:, 0].round().long().repeat_interleave(n), t, generator)

    @staticmethod
    def gather(table, paths: Tensor) -> Tensor:
        """Rewards `(n, n_times)` of state paths `(n, n_times, 1)` from a table (`(T, S)` or a
        list of `(S_t,)`): `table[t][paths[:, t]]`."""
        s = paths[..., 0].round().long()
        cols = [torch.as_tensor(table[t], dtype=torch.float64, device=paths.device)[s[:, t]]
                for t in range(s.shape[1])]
        return torch.stack(cols, dim=1)


@dataclass
class Lattice:
    """A recombining binomial lattice ready for :func:`backward_induction`.

    **Attributes:** `expect` (callable for `transition`), `rewards` (list of `(t + 1,)` discounted
    payoffs, `-inf` where exercise is not allowed), `prices` (list of node prices), `times`,
    `p_up`.
    """

    expect: Callable
    rewards: list[Tensor]
    prices: list[Tensor]
    times: Tensor
    p_up: float


def crr_lattice(spot: float, strike: float, rate: float, vol: float, maturity: float,
                steps: int, kind: str = "put", dividend: float = 0.0,
                probability: str = "classic", exercise_steps=None) -> Lattice:
    """Cox--Ross--Rubinstein lattice of an American (or Bermudan) vanilla option.

    Up factor `u = exp(vol sqrt(dt))`, `d = 1/u`, `dt = maturity/steps`. Up probability:
    `"classic"` `(exp((rate - dividend) dt) - d)/(u - d)` (Cox, Ross & Rubinstein 1979), or
    `"drift"` `1/2 + (rate - dividend - vol^2/2) sqrt(dt) / (2 vol)` (matches the log drift; the
    convention of QuantLib's `CoxRossRubinstein` tree). Rewards are `exp(-rate t) payoff(S)`.

    **Arguments:** option and lattice parameters; `kind` `"put"` or `"call"`; `exercise_steps`:
    `None` (American: every step, including 0) or the step indices where exercise is allowed
    (Bermudan; the last step is always included).
    """
    who = "crr_lattice"
    for name, v in (("spot", spot), ("strike", strike), ("vol", vol), ("maturity", maturity)):
        check_positive_float(v, name, who)
    for name, v in (("rate", rate), ("dividend", dividend)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{who}: {name} must be a finite number, got {v!r}")
    steps = check_positive_int(steps, "steps", who)
    if kind not in ("put", "call"):
        raise ValueError(f"{who}: kind must be 'put' or 'call', got {kind!r}")
    dt = maturity / steps
    u = math.exp(vol * math.sqrt(dt))
    d = 1 / u
    if probability == "classic":
        p = (math.exp((rate - dividend) * dt) - d) / (u - d)
    elif probability == "drift":
        p = 0.5 + 0.5 * (rate - dividend - 0.5 * vol * vol) * math.sqrt(dt) / vol
    else:
        raise ValueError(f"{who}: probability must be 'classic' or 'drift', got {probability!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{who}: up probability {p} outside [0, 1]: refine the lattice")
    if exercise_steps is not None:
        exercise_steps = list(exercise_steps)
        if any(isinstance(s, bool) or int(s) != s for s in exercise_steps):
            raise ValueError(f"{who}: exercise_steps must be integer step indices, got "
                             f"{exercise_steps}")
    allowed = set(range(steps + 1)) if exercise_steps is None else {
        int(s) for s in exercise_steps} | {steps}
    if any(s < 0 or s > steps for s in allowed):
        raise ValueError(f"{who}: exercise_steps must lie in [0, {steps}]")
    times = torch.arange(steps + 1, dtype=torch.float64) * dt
    # every node price is spot * u^j for j in [-steps, steps]; step i uses every other one of
    # j = -i, ..., i, so all steps are strided views of one vector (no per-step exp)
    master = spot * torch.exp(vol * math.sqrt(dt) * torch.arange(-steps, steps + 1,
                                                                 dtype=torch.float64))
    pay = (strike - master if kind == "put" else master - strike).clamp_min(0)
    disc = torch.exp(-rate * times)
    prices, rewards = [], []
    for i in range(steps + 1):
        sl = slice(steps - i, steps + i + 1, 2)
        prices.append(master[sl])
        rewards.append(pay[sl] * disc[i] if i in allowed else torch.full(
            (i + 1,), -math.inf, dtype=torch.float64))

    def expect(t, v):
        return p * v[1:] + (1 - p) * v[:-1]

    return Lattice(expect, rewards, prices, times, p)
