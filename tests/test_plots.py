"""odedepth.plots: file modes of saved figures and clear errors for empty input."""

import os
import stat

import numpy as np
import pytest
import torch

from odedepth import plots
from odedepth.demos.depth import _write_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_save_figure_new_file_gets_0666_minus_umask(tmp_path, umask_027):
    fig = plots.plt.figure()
    plots.save_figure(fig, tmp_path / "new.png")
    plots.plt.close(fig)
    assert stat.S_IMODE(os.stat(tmp_path / "new.png").st_mode) == 0o640  # not mkstemp's 0o600
    assert (tmp_path / "new.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["new.png"]


def test_save_figure_keeps_the_mode_of_the_replaced_file(tmp_path, umask_027):
    p = tmp_path / "keep.png"
    p.write_text("old")
    os.chmod(p, 0o644)
    fig = plots.plt.figure()
    plots.save_figure(fig, p)
    plots.plt.close(fig)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_save_figure_bad_format_leaves_nothing(tmp_path):
    fig = plots.plt.figure()
    with pytest.raises(ValueError, match="xyz"):
        plots.save_figure(fig, tmp_path / "a.xyz")
    plots.plt.close(fig)
    assert os.listdir(tmp_path) == []


def test_demo_text_outputs_get_umask_mode_and_keep_replaced_mode(tmp_path, umask_027):
    _write_atomic(str(tmp_path / "results.md"), "new")
    assert stat.S_IMODE(os.stat(tmp_path / "results.md").st_mode) == 0o640
    old = tmp_path / "results.json"
    old.write_text("{}")
    os.chmod(old, 0o644)
    _write_atomic(str(old), '{"a": 1}')
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o644
    assert old.read_text() == '{"a": 1}'
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]


def test_plot_stopping_boundary_empty_batch_raises_clearly():
    with pytest.raises(ValueError) as err:
        plots.plot_stopping_boundary(torch.arange(3.0), torch.zeros(0, 3))
    assert str(err.value) == ("plot_stopping_boundary: scores is empty (shape (0, 3)); need at "
                              "least one sample and one depth")


def test_plot_stopping_times_empty_without_horizon_raises_clearly():
    with pytest.raises(ValueError) as err:
        plots.plot_stopping_times({"a": []})
    assert str(err.value) == ("plot_stopping_times: the stopping times of every rule ('a') are "
                              "empty and no horizon was given; pass horizon= to draw an empty "
                              "figure")
    # with a horizon (or another rule with times) the range is known: an empty histogram
    fig = plots.plot_stopping_times({"a": []}, horizon=1.0)
    assert fig.axes[0].get_xlim()[1] >= 1.0
    plots.plt.close(fig)
    fig = plots.plot_stopping_times({"a": [], "b": np.array([0.25, 0.5])})
    assert fig.axes[0].get_xlim()[1] >= 0.5
    plots.plt.close(fig)
