"""odedepth.plots: file modes of saved figures (and of the demo's text outputs)."""

import os
import stat

import pytest

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
