"""Drop-in use: an original-interface ProtoPNet through the adapter (same heatmaps as ours with the same weights),
localize_prototype, whole-model pickles behind --trust-pickle, and `protomdm explain` on a CNN and a Transformer."""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image

from protomdm import PrototypeSelector, localize_prototype
from protomdm.cli import main
from protomdm.errors import UserError
from protomdm.explain import MDMLocalizer, UpsampleLocalizer
from protomdm.integrations import ProtoPNetAdapter

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    o = capsys.readouterr()
    return code, o.out + o.err


def _their_module(code_dir: Path):
    """Import tests/assets/original_ppnet.py as a top-level module ``original_ppnet`` from ``code_dir``."""
    code_dir.mkdir(exist_ok=True)
    shutil.copy(ASSETS / "original_ppnet.py", code_dir / "original_ppnet.py")
    sys.path.insert(0, str(code_dir))
    try:
        sys.modules.pop("original_ppnet", None)
        return importlib.import_module("original_ppnet")
    finally:
        sys.path.remove(str(code_dir))


def _theirs_like_ours(module, ours):
    """Their PPNet with our ProtoPNet's weights."""
    cfg = ours.config
    theirs = module.PPNet(copy.deepcopy(ours.features), copy.deepcopy(ours.add_on_layers), cfg.img_size[0],
                          tuple(ours.prototype_vectors.shape), cfg.num_classes)
    with torch.no_grad():
        theirs.prototype_vectors.copy_(ours.prototype_vectors)
        theirs.last_layer.weight.copy_(ours.last_layer.weight)
    return theirs.eval()


@pytest.fixture
def pair(tmp_path):
    ours = tiny_model("protopnet")
    theirs = _theirs_like_ours(_their_module(tmp_path / "theirs"), ours)
    yield ours, theirs
    sys.modules.pop("original_ppnet", None)


def test_adapter_gives_our_heatmaps(pair):
    ours, theirs = pair
    wrapped = ProtoPNetAdapter(theirs)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(wrapped.prototype_scores(x), ours.prototype_scores(x))
        torch.testing.assert_close(wrapped(x), ours(x))
    assert wrapped.num_prototypes == 6 and wrapped.prototypes_of_class(1) == [2, 3] and wrapped.prototype_class(5) == 2
    # float rounding only: on random weights the gradients are nearly flat, and the normalised reconstruction term
    # lifts them above Adam's eps, which then turns the two codes' rounding differences into steps of up to lr
    for loc, tol in ((MDMLocalizer(steps=15), 1e-3), (UpsampleLocalizer(), 1e-4)):
        a = loc.localize_many(x, PrototypeSelector(wrapped, [1, 4]))
        b = loc.localize_many(x, PrototypeSelector(ours, [1, 4]))
        for i in range(2):
            for k in range(2):
                np.testing.assert_allclose(a[i][k].heatmap, b[i][k].heatmap, atol=tol)


def test_adapter_variants_and_missing_interface(pair):
    ours, theirs = pair
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        d = theirs.push_forward(x)[1]
        cos = ProtoPNetAdapter(theirs, activation="similarity")  # push_forward returns similarities (TesNet-style)
        torch.testing.assert_close(cos.prototype_similarity_maps(x), d)
        lin = ProtoPNetAdapter(theirs, activation="linear")
        torch.testing.assert_close(lin.prototype_scores(x), (-d).amax((2, 3)))

    class NotAPrototypeNet(torch.nn.Module):
        last_layer = None

    with pytest.raises(UserError, match="missing: push_forward, prototype_class_identity, prototype_shape"):
        ProtoPNetAdapter(NotAPrototypeNet())


def test_localize_prototype_in_one_call(pair):
    ours, theirs = pair
    x = torch.rand(3, 48, 48)
    a = localize_prototype(theirs, x, 2, steps=10)
    b = localize_prototype(ours, x, 2, steps=10)
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-5)
    assert localize_prototype(theirs, x, 2, method="upsample").heatmap.shape == (48, 48)
    with pytest.raises(UserError, match="unknown MDM setting"):
        localize_prototype(ours, x, 2, step=10)


def test_whole_model_pickles_only_behind_trust_pickle(capsys, tmp_path, pair, png_path, monkeypatch):
    _, theirs = pair
    pth = tmp_path / "ppnet_push.pth"
    torch.save(theirs, pth)  # what the original code's save.py does
    sys.modules.pop("original_ppnet", None)
    args = ["localize", "--ckpt", pth, "--image", png_path, "--prototype", 3, "--steps", 5, "--quiet"]

    def no_load(*a, **k):
        raise AssertionError("the pickle was opened")

    monkeypatch.setattr(torch, "load", no_load)
    code, text = _cli(capsys, *args, "--out", tmp_path / "o")
    assert code == 2 and "original_ppnet" in text and "--trust-pickle" in text and "runs code" in text
    monkeypatch.undo()

    code, text = _cli(capsys, *args, "--trust-pickle", "--out", tmp_path / "o")
    assert code == 2 and "needs module 'original_ppnet'" in text and "--code-dir" in text
    (tmp_path / "empty").mkdir()
    code, text = _cli(capsys, *args, "--trust-pickle", "--code-dir", tmp_path / "empty", "--out", tmp_path / "o")
    assert code == 2 and "'original_ppnet', not found in --code-dir" in text
    path_before = list(sys.path)
    code, text = _cli(capsys, *args, "--trust-pickle", "--code-dir", tmp_path / "theirs", "--out", tmp_path / "o")
    assert code == 0, text
    assert sys.path == path_before  # the code dir was on the import path for the load only
    rec = json.loads((tmp_path / "o" / "scan_localization.json").read_text())
    assert rec["prototype"] == 3 and rec["class_index"] == 1 and rec["model"]["backbone"] == "external:PPNet"


@pytest.mark.parametrize("arch", ["resnet18", "vit_b_16"])
def test_explain_on_a_cnn_and_a_transformer(capsys, tmp_path, arch):
    pytest.importorskip("pytorch_grad_cam")
    img = tmp_path / "bird.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    code, text = _cli(capsys, "explain", "--arch", arch, "--image", img, "--class", 7, "--img-size", 32,
                      "--methods", "mdm,gradcam", "--steps", 3, "--batch-masks", 27, "--out", out, "--quiet")
    assert code == 0, text
    rec = json.loads((out / "bird_explain.json").read_text())
    assert rec["class_index"] == 7 and set(rec["methods"]) == {"mdm", "gradcam"}
    assert all(m["input_size"] == [32, 32] for m in rec["methods"].values())
    assert Image.open(out / "bird_explain.png").size[0] > 200


def test_explain_bad_input(capsys, tmp_path, png_path):
    sd = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, sd)
    for args, msg in [(["--arch", "resnet9000"], "unknown --arch"),
                      (["--arch", "resnet18", "--ckpt", sd], "weights do not fit resnet18"),
                      (["--arch", "resnet18", "--methods", "mdm,gradcam++"], "unknown method")]:
        code, text = _cli(capsys, "explain", *args, "--image", png_path, "--out", tmp_path / "o", "--quiet")
        assert code == 2 and msg in text and text.count("\n") == 1, text


def test_cli_lists_every_cam_method():
    from protomdm.cli import build_parser
    from protomdm.explain.cam import CAM_METHODS
    from protomdm.explain.registry import list_localizers

    assert set(CAM_METHODS) <= set(list_localizers(for_logits=True))  # the registry the CLI reads
    helps = build_parser()._subparsers._group_actions[0].choices["localize"].format_help()
    assert all(m in helps for m in CAM_METHODS)
