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


def test_digits_split_is_stratified_standardised_and_disjoint():
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from odedepth.data import load_digits_split

    d = load_digits_split(seed=3, test_size=0.2)
    x, y = load_digits(return_X_y=True)
    assert len(d.y_train) + len(d.y_test) == len(y) == 1797
    counts = np.bincount(y)
    test_counts = np.bincount(d.y_test.numpy(), minlength=10)
    assert (np.abs(test_counts - 0.2 * counts) <= 0.5 + 1e-9).all()  # rounding only
    assert torch.allclose(d.x_train.mean(0), torch.zeros(64), atol=1e-5)
    std = d.x_train.std(0, unbiased=False)
    assert torch.allclose(std[std > 0], torch.ones_like(std[std > 0]), atol=1e-4)
    # undo the standardisation: every row is a row of scikit-learn's data set, none twice
    raw = np.concatenate([(d.x_train * d.std + d.mean).numpy(), (d.x_test * d.std + d.mean).numpy()])
    rows = {tuple(np.round(r).astype(int)) for r in raw}
    assert np.allclose(raw, np.round(raw), atol=1e-3)
    assert rows == {tuple(r.astype(int)) for r in x}
    with pytest.raises(ValueError, match="test_size"):
        load_digits_split(test_size=1.0)


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_demo_bad_seed_is_named_and_creates_no_folder(tmp_path, capsys, seed):
    out = tmp_path / "new"
    assert cli.main(["demo", "--quick", "--out", str(out), "--seed", str(seed)]) == 2
    assert capsys.readouterr().err == (f"odedepth demo: error: demo: seed must be an integer in "
                                       f"[0, 2**63), got {seed}\n")
    assert not out.exists()
    with pytest.raises(ValueError) as err:
        run(out, quick=True, seed=seed)
    assert str(err.value) == f"demo: seed must be an integer in [0, 2**63), got {seed}"
    assert not out.exists()


def test_digits_split_bad_seed_is_named():
    from odedepth.data import load_digits_split

    for seed in (-1, 2**63, 0.5):
        with pytest.raises(ValueError) as err:
            load_digits_split(seed)
        assert str(err.value) == (f"load_digits_split: seed must be an integer in [0, 2**63), "
                                  f"got {seed!r}")


def test_interrupted_demo_leaves_previous_outputs_intact_and_no_staging(tmp_path, monkeypatch):
    from odedepth import plots

    out = tmp_path / "demo"
    out.mkdir()
    names = ["results.json", "results.md", "boundary_free.png", "boundary_event.png",
             "stopping_times.png", "accuracy_vs_depth.png"]
    for n in names:
        (out / n).write_text(f"previous {n}")

    def boom(*args, **kwargs):  # the third figure fails, after two were written
        raise RuntimeError("disk full while drawing stopping_times.png")

    monkeypatch.setattr(plots, "plot_stopping_times", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run(out, quick=True, seed=1, verbose=False)
    assert sorted(os.listdir(out)) == sorted(names)  # no staging folder, nothing new
    for n in names:
        assert (out / n).read_text() == f"previous {n}"
