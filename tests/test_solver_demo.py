"""The solver demo (odedepth solver-demo) and smoke runs of the ODE benchmarks (--quick)."""

import csv
import sys
from pathlib import Path

import pytest

from odedepth.demos.solver import run

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_solver_demo_quick_writes_plot_and_converges(tmp_path, capsys):
    rows = run(out=tmp_path / "demo", quick=True)
    png = tmp_path / "demo" / "work_precision.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "demo" / "work_precision.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows) == 9
    for name in ("solvers.ode dopri5", "solvers.ode tsit5", "torchdiffeq dopri5"):
        sub = sorted((r for r in rows if r["solver"] == name), key=lambda r: -r["tol"])
        errs = [r["err"] for r in sub]
        # Errors against the scipy DOP853 reference fall with the tolerance, and at 1e-8 the
        # error is below 1e-6 (a dopri5 global error of ~10 x tol on this short, smooth problem).
        assert errs[0] > errs[1] > errs[2], (name, errs)
        assert errs[2] < 1e-6, (name, errs)
        assert sub[2]["nfe"] > sub[0]["nfe"]
    assert "torchdiffeq dopri5" in capsys.readouterr().out


def test_solver_demo_bad_output_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="not a directory"):
        run(out=blocker, quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_ode_overhead", "bench_ode_vdp",
                                    "bench_ode_heterogeneous"])
def test_benchmark_quick_runs(script, capsys, monkeypatch):
    # In-process (no interpreter start-up): import the script and run main(["--quick"]).
    monkeypatch.syspath_prepend(str(BENCH))
    module = __import__(script)
    try:
        rows = module.main(["--quick"])
    finally:
        sys.modules.pop(script, None)
    out = capsys.readouterr().out
    assert "torchdiffeq" in out and "solvers.ode" in out
    assert rows
    if script == "bench_ode_overhead":
        # The equal-error part: torchdiffeq's own run at the rtol sets the target, so its
        # pick exists and does not exceed the error of the same-tolerance table.
        target = rows["same_tolerance"]["torchdiffeq"]["err"]
        assert rows["equal_error"]["torchdiffeq"]["err"] <= target
        assert f"at error <= {target:.2e}: solvers.ode" in out
