"""Batch independence: a sample solved alone and inside a batch of random others takes the same
steps and gives the same answer (hypothesis), including per-sample horizons.

The field is a Duffing oscillator x'' = -x - mu x^3 (conservative, so stable forward and
backward in time) with a per-sample stiffness mu carried as a constant third state component
(d mu / dt = 0): the field is batch-elementwise and samples differ strongly in the number of
steps they need. Equality is to within a couple of ulps: the arithmetic per sample
is the same, but vectorised kernels may round differently for different batch sizes.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import ode

EPS64 = torch.finfo(torch.float64).eps


def duffing(t, y):
    x, v, mu = y.unbind(-1)
    return torch.stack([v, -x - mu * x**3, torch.zeros_like(mu)], -1)


sample = st.tuples(
    st.floats(-2.0, 2.0), st.floats(-2.0, 2.0),  # x, v
    st.floats(0.2, 6.0),  # mu
    st.floats(0.0, 0.5), st.floats(0.3, 3.0),  # t0, horizon length
)


@settings(max_examples=12)
@given(samples=st.lists(sample, min_size=2, max_size=5), which=st.integers(0, 4),
       method=st.sampled_from(["dopri5", "tsit5", "bosh3"]), compact=st.booleans(),
       reverse=st.booleans())
def test_sample_alone_equals_sample_in_batch(samples, which, method, compact, reverse):
    which = which % len(samples)
    y0 = torch.tensor([[x, v, mu] for x, v, mu, _, _ in samples], dtype=torch.float64)
    t0 = torch.tensor([s[3] for s in samples], dtype=torch.float64)
    t1 = t0 + torch.tensor([s[4] for s in samples], dtype=torch.float64)
    if reverse:
        t0, t1 = t1, t0
    kw = dict(method=method, rtol=1e-7, atol=1e-9, compact=compact, max_steps=20_000)
    batch = ode.solve(duffing, y0, (t0, t1), **kw)
    alone = ode.solve(duffing, y0[which: which + 1], (t0[which: which + 1], t1[which: which + 1]), **kw)
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert int(batch.stats[key][which]) == int(alone.stats[key][0]), key
    assert int(batch.status[which]) == int(alone.status[0])
    assert float(batch.t[which]) == float(alone.t[0]) == float(t1[which])
    scale = alone.y[0].abs().clamp_min(1.0)
    assert float(((batch.y[which] - alone.y[0]).abs() / scale).max()) <= 4 * EPS64


@settings(max_examples=8)
@given(samples=st.lists(sample, min_size=3, max_size=6))
def test_batch_composition_does_not_matter(samples):
    # Reversing the batch order permutes the answers exactly (no cross-sample coupling).
    y0 = torch.tensor([[x, v, mu] for x, v, mu, _, _ in samples], dtype=torch.float64)
    t1 = torch.tensor([s[4] for s in samples], dtype=torch.float64)
    a = ode.solve(duffing, y0, (0.0, t1), rtol=1e-6, atol=1e-8)
    b = ode.solve(duffing, y0.flip(0), (0.0, t1.flip(0)), rtol=1e-6, atol=1e-8)
    assert torch.equal(a.stats["n_steps"], b.stats["n_steps"].flip(0))
    assert torch.allclose(a.y, b.y.flip(0), rtol=4 * EPS64, atol=0)


@settings(max_examples=25, deadline=None)
@given(samples=st.lists(sample, min_size=2, max_size=6), reverse=st.booleans(),
       controller=st.sampled_from(["i", "pi"]),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       t0=st.sampled_from([0.1, -3.3, 1e-30, 1234.567]), length=st.sampled_from([2.2, 0.7]),
       dt_min=st.sampled_from([0.0, 1e-9, 0.05]))
def test_float_span_equals_tensor_span(samples, reverse, controller, dtype, t0, length, dt_min):
    """Float spans take a specialised path (t1, direction and step floor kept as python
    numbers); it must give bit-identical steps, statuses and results to the same span given
    as (batch,) tensors, forwards and backwards, with and without a step floor dt_min."""
    y0 = torch.tensor([[s[0], s[1], s[2]] for s in samples], dtype=dtype)
    t1 = t0 + length
    if reverse:
        t0, t1 = t1, t0
    n = len(samples)
    kw = dict(rtol=1e-5, atol=1e-7, controller=controller, dt_min=dt_min, throw=False)
    a = ode.solve(duffing, y0, (t0, t1), **kw)
    b = ode.solve(duffing, y0, (torch.full((n,), t0, dtype=dtype),
                                torch.full((n,), t1, dtype=dtype)), **kw)
    assert torch.equal(a.status, b.status)
    assert torch.equal(a.stats["n_steps"], b.stats["n_steps"])
    assert torch.equal(a.stats["n_rejected"], b.stats["n_rejected"])
    assert torch.equal(a.y, b.y) and torch.equal(a.t, b.t)
    # every sample that succeeded ends exactly on its horizon (t1 rounded to the dtype)
    ok = a.status == int(ode.Status.SUCCESS)
    assert (a.t[ok] == torch.tensor(t1, dtype=dtype)).all()


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-6e4, 6e4, allow_subnormal=True) | st.floats(-1e-300, 1e-300),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
def test_python_rounding_to_the_dtype_matches_torch(x, dtype):
    # The float-span path rounds t0, t1 and the step floor to the dtype without tensors.
    from solvers.ode.solve import _round_to

    assert _round_to(x, dtype) == torch.tensor(x, dtype=dtype).item()
