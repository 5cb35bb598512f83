"""A localizer is one module and one decorator: registered, it is a method of every command."""

import csv

import numpy as np
import pytest
from conftest import tiny_model

from protomdm.cli import main
from protomdm.explain import Localizer, Maps, list_localizers, register_localizer
from protomdm.explain.registry import _LOCALIZERS
from protomdm.models import save_checkpoint


class CentreLocalizer(Localizer):
    """A toy method: the evidence is always in the image's centre (one method overridden)."""

    method = "centre"

    def compute_maps(self, x, selector, pairs):
        h, w = x.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        heat = np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (h * w / 16))
        return Maps(np.stack([heat] * len(pairs)))


@pytest.fixture
def toy():
    register_localizer("centre")(CentreLocalizer)
    yield
    _LOCALIZERS.pop("centre")


def test_a_registered_localizer_runs_through_localize_and_evaluate(toy, tmp_path, png_path, capsys):
    assert "centre" in list_localizers() and "centre" in list_localizers(for_logits=True)
    ckpt = save_checkpoint(tiny_model(class_names=("disk", "square", "cross"), img_size=(48, 48)), tmp_path / "m.pt")
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(png_path), "--method", "centre", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0
    assert main(["evaluate", "--dataset", "synthetic", "--ckpt", str(ckpt), "--limit", "2", "--methods",
                 "upsample,centre", "--no-faithfulness", "--out", str(tmp_path / "e"), "--quiet"]) == 0
    with open(tmp_path / "e" / "results.csv", newline="") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"upsample", "centre"}
    assert "| centre |" in (tmp_path / "e" / "summary.md").read_text()


def test_an_unknown_method_lists_the_registered_ones(tmp_path, png_path, capsys):
    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(png_path), "--method", "gradcamm", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'gradcamm'; choose one of mdm, upsample, rise, extremal, gradcam" in err and err.count("\n") == 1


def test_the_localizer_base_is_abstract():
    with pytest.raises(TypeError):
        Localizer()
