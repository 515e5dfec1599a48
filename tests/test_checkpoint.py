"""odedepth.checkpoint: atomic saves, clear errors on corrupt files, missing keys, shapes."""

import os
import stat

import pytest
import torch

from odedepth import checkpoint
from odedepth.models import create_model

SMALL = dict(channels=(4, 8, 8, 16), num_classes=5)


def test_checkpoint_errors_name_the_problem(tmp_path):
    model = create_model("resnet18", **SMALL)
    sd = model.state_dict()
    bad = dict(sd)
    del bad["layer2.0.downsample.0.weight"]
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(checkpoint.CheckpointError, match="layer2.0.downsample.0.weight"):
        checkpoint.load_state_dict(model, bad)
    with pytest.raises(checkpoint.CheckpointError, match="extra.weight"):
        checkpoint.load_state_dict(model, bad)
    other = create_model("resnet18", channels=(4, 8, 8, 16), num_classes=7)
    with pytest.raises(checkpoint.CheckpointError, match=r"fc.weight: model \(7, 16\)"):
        checkpoint.load_state_dict(other, sd)
    path = tmp_path / "m.pt"
    checkpoint.save(sd, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="empty"):
        checkpoint.load(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")
    # Bytes that are no checkpoint at all: corrupt, without the weights_only advice.
    (tmp_path / "junk.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt") as info:
        checkpoint.load(tmp_path / "junk.pt")
    assert "weights_only=False" not in str(info.value)


def test_non_tensor_values_are_refused_before_anything_is_loaded():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {k: torch.ones_like(v) for k, v in before.items()}
    bad["1.weight"] = "not a tensor"
    with pytest.raises(checkpoint.CheckpointError, match=r"not tensors: 1.weight \(str\)"):
        checkpoint.load_state_dict(model, bad)
    for k, v in model.state_dict().items():  # no key was copied, not even the valid ones
        assert torch.equal(v, before[k]), k


def test_atomic_save_leaves_old_file_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"a": torch.arange(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled
        checkpoint.save({"a": lambda: 0}, path)
    assert torch.equal(checkpoint.load(path)["a"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_save_model_roundtrip(tmp_path):
    model = create_model("resnet50", gated=True, exits="shared", **SMALL).eval()
    checkpoint.save_model(model, tmp_path / "m.pt", epoch=3)
    again = checkpoint.load_model(tmp_path / "m.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], model(x)[0], rtol=0, atol=0)


class _Opaque:
    """A class torch.load(weights_only=True) refuses to unpickle."""

    def __init__(self):
        self.x = 1


def test_unsafe_pickles_are_refused_clearly(tmp_path):
    path = tmp_path / "obj.pt"
    checkpoint.save({"obj": _Opaque()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="weights_only"):
        checkpoint.load(path)
    assert checkpoint.load(path, weights_only=False)["obj"].x == 1
    with pytest.raises(ValueError, match="no .config"):
        checkpoint.save_model(torch.nn.Linear(2, 2), tmp_path / "lin.pt")
    checkpoint.save({"state_dict": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(checkpoint.CheckpointError, match="save_model"):
        checkpoint.load_model(tmp_path / "nocfg.pt")
    with pytest.raises(FileNotFoundError, match="directory"):
        checkpoint.save({}, tmp_path / "missing_dir" / "x.pt")



def test_save_keeps_the_mode_of_the_replaced_file(tmp_path):
    p = tmp_path / "m.pt"
    p.write_bytes(b"old")
    os.chmod(p, 0o644)
    checkpoint.save({"a": torch.ones(1)}, p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    os.chmod(p, 0o640)
    checkpoint.save({"a": torch.ones(2)}, p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    assert checkpoint.load(p)["a"].shape == (2,)
    assert [q.name for q in tmp_path.iterdir()] == ["m.pt"]  # no temporary left


def test_new_file_gets_0666_minus_umask_like_open(tmp_path):
    old = os.umask(0o027)
    try:
        checkpoint.save({"a": torch.ones(1)}, tmp_path / "new.pt")
        with open(tmp_path / "ref", "w"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.pt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "ref").st_mode) == 0o640


def test_save_writes_through_a_symlink_and_keeps_it(tmp_path):
    real = tmp_path / "real.pt"
    torch.save({"a": torch.zeros(1)}, real)
    os.chmod(real, 0o644)
    link = tmp_path / "latest.pt"
    os.symlink("real.pt", link)  # relative, as `ln -s real.pt latest.pt` makes it
    checkpoint.save({"a": torch.ones(1)}, link)
    assert os.path.islink(link) and os.readlink(link) == "real.pt"
    assert checkpoint.load(real)["a"].item() == 1.0
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o644
    assert sorted(q.name for q in tmp_path.iterdir()) == ["latest.pt", "real.pt"]
    # a dangling link: the file it names is created
    os.symlink("future.pt", tmp_path / "next.pt")
    checkpoint.save({"a": torch.full((1,), 2.0)}, tmp_path / "next.pt")
    assert os.path.islink(tmp_path / "next.pt")
    assert checkpoint.load(tmp_path / "future.pt")["a"].item() == 2.0
