"""MDM on every architecture: XProtoNet localizes its findings, and nothing empty is ever reported as ok."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from oracles import BoxOracle, oracle_image
from torch import nn

from protomdm import LogitSelector, MDMLocalizer, PrototypeSelector, load_model, save_checkpoint
from protomdm.cli import main
from protomdm.data.images import model_input
from protomdm.data.synthetic import SyntheticLesions
from protomdm.evaluation.metrics import dice
from protomdm.training import train
from protomdm.training.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BOX = (36, 8, 56, 28)


class ConstantLogits(nn.Module):
    """A classifier that ignores its input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.5, -0.5]))
        self.num_classes = 2

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2) + 0 * x.mean((1, 2, 3))[:, None]


def test_a_target_independent_of_the_image_is_refused_not_an_empty_ok():
    loc = MDMLocalizer(steps=50).localize(oracle_image(), LogitSelector(ConstantLogits(), 0))
    assert loc.status == "empty" and not loc.ok
    assert "does not depend on the image" in loc.reason
    assert loc.box(90) is None and loc.regions(90) == [] and loc.steps == 0  # nothing trained
    summary = loc.summary()
    assert summary["status"] == "empty" and summary["reason"] == loc.reason


def test_the_reconstruction_term_does_not_depend_on_the_models_scale():
    """The same evidence, its activation scaled by 1000: the normalised loss, hence the masks, are the same."""

    class Scaled(nn.Module):
        def __init__(self, inner, k):
            super().__init__()
            self.inner, self.k = inner, k

        def forward(self, x):
            return self.k * self.inner(x)

    oracle = BoxOracle(BOX)
    a = MDMLocalizer(steps=120, tol=None).localize(oracle_image(), LogitSelector(oracle, 0, num_classes=2))
    b = MDMLocalizer(steps=120, tol=None).localize(oracle_image(), LogitSelector(Scaled(oracle, 1000.0), 0,
                                                                                 num_classes=2))
    assert a.ok and b.ok
    assert np.abs(a.heatmap - b.heatmap).max() < 1e-3


def test_an_empty_heatmap_is_a_status_everywhere(tmp_path):
    """A prototype network whose features ignore the image: localize says empty (exit 1), in the JSON, the
    terminal and results.csv; a folder run finishes those images as empty, not failed and not ok."""
    model = tiny_model("protopnet")
    with torch.no_grad():
        last_conv = [m for m in model.add_on_layers if isinstance(m, nn.Conv2d)][-1]
        last_conv.weight.zero_()  # latent features = sigmoid(bias): the same for every image
    ckpt = save_checkpoint(model, tmp_path / "blind.pt")
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        np.save(inputs / f"img{i}.npy", rng.random((48, 48)).astype(np.float32))
    code = main(["localize", "--ckpt", str(ckpt), "--image", str(inputs / "img0.npy"), "--out", str(tmp_path / "one"),
                 "--quiet", "--steps", "20"])
    assert code == 1
    rec = json.loads((tmp_path / "one" / "img0_localization.json").read_text())
    assert rec["status"] == "empty" and "does not depend on the image" in rec["reason"] and rec["box"] is None
    code = main(["localize", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(tmp_path / "many"),
                 "--quiet", "--steps", "20"])
    assert code == 1
    with open(tmp_path / "many" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["empty", "empty"] and all("depend" in r["error"] for r in rows)
    assert not (tmp_path / "many" / "failures.txt").exists()
    # resume treats them as finished
    assert main(["localize", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(tmp_path / "many"),
                 "--quiet", "--steps", "20", "--resume"]) == 1
    with open(tmp_path / "many" / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.fixture(scope="module")
def trained_xprotonet(tmp_path_factory):
    out = tmp_path_factory.mktemp("xprotonet")
    cfg = load_train_config(CONFIGS / "synthetic_xprotonet.yaml")
    cfg.device = "cpu"
    res = train(cfg, out, progress=False)
    assert res.best_metric >= 0.95  # test mean AUROC
    return load_model(out / "best.pt"), cfg


def test_mdm_localizes_every_finding_of_the_published_xprotonet(trained_xprotonet):
    """On the synthetic XProtoNet (Kim et al.'s log similarity): for every finding of the test images, the MDM
    heatmap of the finding's best prototype is non-empty and its p90 region lies on the planted object."""
    model, cfg = trained_xprotonet
    assert model.config.activation == "log"
    data = SyntheticLesions(cfg.model.class_names, n=3, size=64, channels=1, multilabel=True, seed=cfg.data.seed + 1)
    samples = [data.sample(i) for i in range(3)]
    x = model_input(torch.stack([torch.from_numpy(s.image) for s in samples]), model.config)
    with torch.no_grad():
        scores = model.prototype_scores(x)
    findings, protos = [], []
    for b, s in enumerate(samples):
        for c in np.flatnonzero(s.labels):
            own = model.prototypes_of_class(int(c))
            findings.append((b, s.masks[c]))
            protos.append(own[int(scores[b, own].argmax())])
    assert len(findings) >= 3
    sel = PrototypeSelector(model, sorted(set(protos)))
    locs = MDMLocalizer().localize_pairs(x, sel, [(b, sel.indices.index(j)) for (b, _), j in zip(findings, protos)])
    for (b, truth), loc in zip(findings, locs):
        assert loc.ok, loc.reason
        region = loc.binary(90)
        assert (region & truth).any(), f"image {b}: the p90 region misses the object"
        assert dice(region, truth) > 0.1
