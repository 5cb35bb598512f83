import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import tiny_model

from protomdm import load_model, save_checkpoint
from protomdm.errors import CheckpointError


def test_round_trip_in_a_new_process(tmp_path, architecture):
    model = tiny_model(architecture, seed=3)
    path = save_checkpoint(model, tmp_path / "m.pt")
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x)
    code = (
        "import sys, torch, protomdm\n"
        "m = protomdm.load_model(sys.argv[1])\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad(): torch.save(m(x), sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], check=True)
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.equal(got, expected)
    again = load_model(path)
    assert again.config == model.config and not again.training


def test_checkpoint_is_plain_data(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "protomdm-checkpoint"
    assert ckpt["config"]["architecture"] == "protopnet" and ckpt["config"]["class_names"] == ["a", "b", "c"]
    assert ckpt["config"]["img_size"] == [48, 48] and len(ckpt["config"]["mean"]) == 3


def test_bad_checkpoints_each_give_one_clear_error(tmp_path):
    good = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    cases = {}
    cases["missing"] = tmp_path / "nope.pt"
    (tmp_path / "text.pt").write_text("hello")
    cases["not torch"] = tmp_path / "text.pt"
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = tmp_path / "trunc.pt"
    torch.save({"weight": torch.zeros(2)}, tmp_path / "sd.pt")
    cases["state dict"] = tmp_path / "sd.pt"
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    cases["whole pickled model"] = tmp_path / "whole.pt"
    expected = {"missing": "not found", "not torch": "not a PyTorch checkpoint", "truncated": "not a PyTorch checkpoint",
                "state dict": "plain state_dict", "whole pickled model": "pickled whole model .classes from torch.nn.*--trust-pickle"}
    for name, path in cases.items():
        with pytest.raises(CheckpointError, match=expected[name]):
            load_model(path)
    with pytest.raises(CheckpointError, match="not xprotonet"):
        load_model(good, architecture="xprotonet")
    assert zipfile.is_zipfile(good)


def test_weights_that_do_not_fit(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["prototype_dim"] = 8
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "bad.pt")
