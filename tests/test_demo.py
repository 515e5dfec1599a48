"""The main job: `odedepth demo` (quick mode) writes its table, plots and results atomically."""

import json
import os

import pytest

from odedepth import cli
from odedepth.demos.depth import run

EXPECTED_RULES = {"fixed horizon T", "hazard", "free boundary", "event boundary",
                  "max-prob 0.99"}


def test_demo_cli_quick_writes_table_plots_and_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| rule | accuracy (%) | mean tau |" in printed
    assert str(out.resolve()) in printed
    files = set(os.listdir(out))
    assert {"results.json", "results.md", "boundary_free.png", "boundary_event.png",
            "stopping_times.png", "accuracy_vs_depth.png"} <= files
    assert not [f for f in files if f.startswith(".tmp-")]  # no half-written leftovers
    res = json.loads((out / "results.json").read_text())
    assert set(res["rules"]) == EXPECTED_RULES
    T = res["config"]["t1"]
    for r in res["rules"].values():
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["p50_tau"] <= r["p90_tau"] <= T + 1e-9
        assert 0.0 <= r["mean_tau"] <= T + 1e-9
        assert r["mean_nfe"] > 0 and r["wall_s"] > 0
    # the fixed-horizon baseline integrates every sample to T
    assert res["rules"]["fixed horizon T"]["mean_tau"] == pytest.approx(T)
    # digits is easy: even the quick run beats chance (10%) by far
    assert res["rules"]["fixed horizon T"]["accuracy"] > 0.5
    assert "| hazard |" in (out / "results.md").read_text()


def test_demo_rejects_a_file_as_output_folder(tmp_path, capsys):
    f = tmp_path / "not_a_folder"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        run(f, quick=True)
    assert cli.main(["demo", "--quick", "--out", str(f)]) == 2
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed"):
        run(tmp_path / "x", quick=True, seed=1.5)
