"""Smoke run of benchmarks/bench_stopping.py --quick against the published max-call value.

Becker, Cheridito & Jentzen (2019), Table 2 (d = 5, S0 = 100): point estimate 26.16. With the
quick settings (20,000 LSM paths, 50 x 50 dual paths) the intervals are wide, but the published
value must lie between the lower bound's CI low end and the upper bound's CI high end.
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
        assert low.ci[0] <= 26.16 <= up.ci[1], name
        assert low.value <= up.value + 3 * (low.stderr + up.stderr), name
