"""Smoke run of benchmarks/bench_stopping.py --quick against the published max-call value.

Becker, Cheridito & Jentzen (2019), Table 2 (d = 5, S0 = 100): lower bound 26.149, upper bound
26.167, point estimate 26.16. With the quick settings (20,000 LSM paths, 50 x 50 dual paths,
one neural epoch) the intervals are wide. Each of our bounds must be valid (lower not above the
published upper bound, upper not below the published lower bound, within their 95% intervals),
and the LSM lower bound, whose fit is cheap, must be close: within 3 standard errors plus 0.1 of
26.16 (a wrong discount or payoff moves it by more than 1; the neural fit of one epoch is far
from converged, so only its validity is checked here, its accuracy is in test_optimal_stopping).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_stopping.py")


@pytest.mark.slow
def test_bench_stopping_quick(capsys):
    spec = importlib.util.spec_from_file_location("bench_stopping", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--quick", "--threads", "0"])
    printed = capsys.readouterr().out
    assert "LSM poly2" in printed and "neural" in printed
    for name, (low, up) in out.items():
        assert low.ci[0] <= 26.167, name        # a lower bound
        assert up.ci[1] >= 26.149, name         # an upper bound
        assert low.value <= up.value + 3 * (low.stderr + up.stderr), name
    low, up = out["lsm"]
    assert abs(low.value - 26.16) <= 3 * low.stderr + 0.1
