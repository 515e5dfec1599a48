"""The equal-error selection and the error-floor detection of benchmarks/bench_ode_overhead.py, on
hand-made work-precision points whose answers are known by construction."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_ode_overhead

    yield bench_ode_overhead
    sys.modules.pop("bench_ode_overhead", None)


def points(rtols, errs, times):
    return [dict(rtol=r, err=e, time=t) for r, e, t in zip(rtols, errs, times)]


RTOLS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


def test_cheapest_meeting_takes_the_fastest_run_at_or_below_the_target(bench):
    pts = points(RTOLS, (5e-5, 2e-5, 9e-6, 9.5e-6, 4e-6, 2e-6, 1e-6),
                 (1.0, 1.1, 1.4, 1.2, 1.5, 1.45, 2.5))
    # An error equal to the target counts ("equal or better"); 3e-5 is cheaper but above it.
    assert bench.cheapest_meeting(pts, 9e-6)["rtol"] == 1e-4
    assert bench.cheapest_meeting(pts, 8.9e-6)["rtol"] == 3e-6
    # Time decides, not rtol: 3e-6 (1.45) beats the looser 1e-5 (1.5).
    assert bench.cheapest_meeting(pts, 4e-6)["rtol"] == 3e-6
    assert bench.cheapest_meeting(pts, 2e-5)["rtol"] == 3e-4
    assert bench.cheapest_meeting(pts, 1e-7) is None


def test_error_floor_only_where_the_error_stops_falling(bench):
    times = range(len(RTOLS))
    # Truncation regime: the error falls in proportion to rtol over the whole sweep.
    assert bench.error_floor(points(RTOLS, [10 * r for r in RTOLS], times)) is None
    # Round-off regime from 1e-4 on: four runs within 3x of the smallest error (1e-6).
    errs = (1e-2, 3e-3, 2.5e-6, 1e-6, 2e-6, 1.5e-6, 2.9e-6)
    assert bench.error_floor(points(RTOLS, errs, times)) == (1e-4, 1e-6)
    # Input order does not matter (sorted loose to tight inside).
    assert bench.error_floor(points(RTOLS[::-1], errs[::-1], times)) == (1e-4, 1e-6)
    # Only the two tightest runs are close: too short a stretch to call it a floor.
    errs = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 2e-6, 1e-6)
    assert bench.error_floor(points(RTOLS, errs, times)) is None


def test_sweep_skips_our_rtols_below_four_eps_in_float32_only(bench):
    import torch

    rtols = (1e-6, 3e-7, 1e-7)
    runs, notes = bench.sweep_runs(["solvers.ode", "torchdiffeq"], rtols, torch.float32)
    assert [r for n, r in runs if n == "solvers.ode"] == [1e-6]  # 4 eps = 4.8e-7
    assert [r for n, r in runs if n == "torchdiffeq"] == list(rtols)
    assert "3e-07, 1e-07" in notes["solvers.ode"] and "torchdiffeq" not in notes
    runs, notes = bench.sweep_runs(["solvers.ode"], rtols, torch.float64)
    assert [r for _, r in runs] == list(rtols) and not notes


@pytest.mark.parametrize("block, repeats", [(1, 5), (4, 6), (4, 7), (2, 3)])
def test_interleaved_timing_runs_blocks_and_times_all_but_their_first_run(bench, block, repeats):
    calls, timed = [], []

    def runner(name):
        def run():
            calls.append(name)
            return len(calls)
        return run

    res = bench.interleaved_medians({"a": runner("a"), "b": runner("b")}, repeats, "cpu",
                                    record=lambda name, out, s: timed.append((name, out)),
                                    block=block)
    per_turn = block - 1 if block > 1 else 1  # timed runs per turn
    full, rest = divmod(repeats, per_turn)
    # one warm-up each, then turns of `block` consecutive runs of one runner; the last turn
    # ends once a runner has `repeats` timed runs
    expected = ["a", "b"] + (["a"] * block + ["b"] * block) * full
    if rest:
        expected += (["a"] * (rest + 1) + ["b"] * (rest + 1)) if block > 1 else []
    assert calls == expected
    for name in "ab":
        assert len([out for n, out in timed if n == name]) == repeats
    # the first run of each block (its warm-up) is never timed
    if block > 1:  # a block starts where the runner changes (run numbers are 1-based)
        starts = {i + 1 for i in range(2, len(calls)) if i == 2 or calls[i] != calls[i - 1]}
        assert len(starts) == 2 * (full + bool(rest))
        assert not starts & {out for _, out in timed}
    assert set(res) == {"a", "b"} and res["b"][1] == len(calls)
