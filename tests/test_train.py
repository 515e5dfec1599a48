"""odedepth.train.fit: checkpoints that resume bit-identically, and checkpoint paths checked
before any training."""

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from odedepth.checkpoint import CheckpointError, load
from odedepth.train import fit


def _setup(width=8):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)
    model = nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Dropout(0.2), nn.Linear(width, 2))
    return model, loader


class _Stop(Exception):
    pass


def _interrupt_after(k):
    def log(msg):
        if msg.startswith(f"epoch {k + 1}/"):
            raise _Stop
    return log


def _strip_seconds(history):
    return [{**h, "train": {k: v for k, v in h["train"].items() if k != "seconds"}}
            for h in history]


def test_resume_after_epoch_k_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    model, loader = _setup()
    full = fit(model, loader, epochs=3, eval_loader=loader)
    want = [p.detach().clone() for p in model.parameters()]

    model, loader = _setup()
    ck = str(tmp_path / "ck.pt")
    with pytest.raises(_Stop):  # epoch 2 trained, killed before its checkpoint
        fit(model, loader, epochs=3, eval_loader=loader, checkpoint=ck, log=_interrupt_after(1))
    saved = load(ck)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    assert saved["scheduler"]["last_epoch"] == 4  # 4 steps of a 12-step cosine

    model, loader = _setup()  # a fresh process: fresh model, loader, RNG
    resumed = fit(model, loader, epochs=3, eval_loader=loader, checkpoint=ck, resume=ck)
    for a, b in zip(model.parameters(), want):
        assert torch.equal(a, b)
    assert _strip_seconds(resumed) == _strip_seconds(full)
    assert [h["epoch"] for h in resumed] == [0, 1, 2]
    assert load(ck)["epoch"] == 3
    # resuming a finished run trains nothing and returns its history
    before = [p.detach().clone() for p in model.parameters()]
    again = fit(model, loader, epochs=3, resume=ck)
    assert _strip_seconds(again) == _strip_seconds(full)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_resume_refuses_another_configuration_and_corrupt_files(tmp_path):
    model, loader = _setup()
    ck = str(tmp_path / "ck.pt")
    fit(model, loader, epochs=2, checkpoint=ck)
    model, loader = _setup()
    with pytest.raises(CheckpointError) as err:
        fit(model, loader, epochs=3, resume=ck)
    assert str(err.value) == (f"fit: resume={ck!r} was written for another configuration "
                              "(epochs: checkpoint 2 vs now 3)")
    wider, loader = _setup(width=9)
    with pytest.raises(CheckpointError, match=r"shape mismatches 0.weight: model \(9, 5\) vs "
                                              r"checkpoint \(8, 5\)"):
        fit(wider, loader, epochs=2, resume=ck)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is corrupt or not a torch checkpoint"):
        fit(model, loader, epochs=2, resume=str(bad))
    old = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "optimizer": {}, "history": []}, old)
    with pytest.raises(CheckpointError) as err:
        fit(model, loader, epochs=2, resume=str(old))
    assert str(err.value) == (f"fit: resume={str(old)!r} was not written by fit with resume "
                              "support (format 'odedepth.train.fit/1'; missing format, epoch, "
                              "config, scheduler, scaler, rng)")


def test_checkpoint_that_is_a_folder_is_refused_before_training(tmp_path):
    model, loader = _setup()
    ck = tmp_path / "ck.pt"
    ck.mkdir()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as err:
        fit(model, loader, epochs=2, checkpoint=str(ck))
    assert str(err.value) == f"fit: checkpoint {str(ck)!r} is a folder, not a file path"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert os.listdir(ck) == [] and os.listdir(tmp_path) == ["ck.pt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_checkpoint_in_a_read_only_folder_is_refused_before_training(tmp_path):
    model, loader = _setup()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ValueError) as err:
            fit(model, loader, epochs=1, checkpoint=str(ro / "ck.pt"))
    finally:
        ro.chmod(0o755)
    assert str(err.value) == f"fit: checkpoint folder {str(ro)!r} is not writable"
