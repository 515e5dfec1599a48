"""Gradient moments of a gated network over its gate law, by enumerating all 2^S gate settings.

Gated depth (Darzi et al., CVPRW 2025, Lemma 5.3 / Theorem 5.4): with independent gates
b_s ~ Bernoulli(p_s) and a mini-batch gradient affine in the gates,
G(theta, b) = G(theta, 0) + sum_s b_s Delta_s, Delta_s = G(b^{(s+)}) - G(b^{(s-)}),

    E_b ||G||^2 = ||G_bar||^2 + sum_s p_s (1 - p_s) ||Delta_s||^2,
    G_bar = G(theta, 0) + sum_s p_s Delta_s = E_b G.

For any (not necessarily affine) G the second-moment identity E||G||^2 = ||E G||^2 + tr Cov(G)
holds; the lemma's content is that the covariance is then diagonal in the gates. This module
computes every side of both identities exactly so that tests and studies can compare them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GateMoments", "gate_gradient_moments"]


@dataclass
class GateMoments:
    """Exact moments of a gate-dependent vector G(b) under independent Bernoulli gates.

    - `second_moment`: E||G||^2.
    - `mean`: E G (vector); `mean_sq_norm`: ||E G||^2.
    - `trace_cov`: tr Cov(G) = E||G - E G||^2 (computed from the centred vectors).
    - `deltas`: `(S, dim)` Delta_s = G(e_s) - G(0) (other gates off).
    - `affine_mean`: G(0) + sum_s p_s Delta_s (Lemma 5.3's G_bar).
    - `lemma_rhs`: ||G_bar||^2 + sum_s p_s (1 - p_s) ||Delta_s||^2.
    """

    second_moment: float
    mean: Tensor
    mean_sq_norm: float
    trace_cov: float
    deltas: Tensor
    affine_mean: Tensor
    lemma_rhs: float


def gate_gradient_moments(grad_fn: Callable[[Tensor], Tensor], probs: Sequence[float] | Tensor
                          ) -> GateMoments:
    """Enumerate the 2^S gate settings and compute the moments of `grad_fn(b)`.

    **Arguments:**

    - `grad_fn`: `b -> G(b)`, `b` a `(S,)` float tensor of 0/1 gates; returns a vector (e.g. the
      flattened mini-batch gradient for that configuration). Called 2^S times.
    - `probs`: `(S,)` gate probabilities p_s in [0, 1].

    **Returns:** a :class:`GateMoments` (float64).
    """
    p = torch.as_tensor(probs, dtype=torch.float64).flatten()
    if p.numel() == 0 or p.numel() > 16:
        raise ValueError(f"gate_gradient_moments: need 1..16 gates, got {p.numel()}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"gate_gradient_moments: probabilities must lie in [0, 1], got {p.tolist()}")
    S = p.numel()
    grads, weights, settings = [], [], []
    for bits in itertools.product((0.0, 1.0), repeat=S):
        b = torch.tensor(bits, dtype=torch.float64)
        g = torch.as_tensor(grad_fn(b)).detach().to(torch.float64).flatten()
        grads.append(g)
        weights.append(torch.prod(torch.where(b > 0, p, 1 - p)))
        settings.append(bits)
    G = torch.stack(grads)
    w = torch.stack(weights)
    mean = (w[:, None] * G).sum(0)
    second = (w * G.pow(2).sum(1)).sum()
    trace_cov = (w * (G - mean).pow(2).sum(1)).sum()
    index = {bits: i for i, bits in enumerate(settings)}
    g0 = G[index[(0.0,) * S]]
    deltas = torch.stack([G[index[tuple(1.0 if j == s else 0.0 for j in range(S))]] - g0
                          for s in range(S)])
    gbar = g0 + (p[:, None] * deltas).sum(0)
    rhs = gbar.pow(2).sum() + (p * (1 - p) * deltas.pow(2).sum(1)).sum()
    return GateMoments(second_moment=second.item(), mean=mean, mean_sq_norm=mean.pow(2).sum().item(),
                       trace_cov=trace_cov.item(), deltas=deltas, affine_mean=gbar,
                       lemma_rhs=rhs.item())
