"""A new architecture is one module and one decorator: a ProtoPNet variant with a cosine similarity, registered
here, is trained (warm, joint, push, last layer), localized by MDM and the network's own search through the CLI,
and explained in a case report, without any change to protomdm."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
import torch.nn.functional as F
from conftest import small_config
from PIL import Image

from protomdm.cli import main
from protomdm.data.synthetic import SyntheticLesions
from protomdm.models import ProtoPNet, list_architectures, load_model, register_architecture
from protomdm.models.base import Index
from protomdm.training import train


@register_architecture("cosine_protopnet")
class CosineProtoPNet(ProtoPNet):
    """ProtoPNet whose distance is ``1 - cos`` of a latent patch and a prototype (similarity ``cos``)."""

    activations = ("cosine",)

    def distances(self, z: torch.Tensor, idx: Index = None) -> torch.Tensor:
        protos = self.prototype_vectors[self._index(idx)]
        return 1 - F.conv2d(F.normalize(z, dim=1), F.normalize(protos, dim=1))

    def distance_2_similarity(self, d: torch.Tensor) -> torch.Tensor:
        return 1 - d


def test_a_registered_architecture_trains_pushes_localizes_and_reports(tmp_path):
    assert "cosine_protopnet" in list_architectures()
    cfg = small_config(warm_epochs=1, joint_epochs=2, last_layer_epochs=1, push_epochs=(2,))
    cfg.model = dataclasses.replace(cfg.model, architecture="cosine_protopnet", activation="cosine")
    train(cfg, tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "best.pt"
    model = load_model(ckpt)
    assert type(model) is CosineProtoPNet
    records = torch.load(ckpt, weights_only=True)["extra"]["push"]
    assert len(records) == model.num_prototypes
    ds = SyntheticLesions(cfg.model.class_names, n=cfg.data.num_train, size=32, seed=cfg.data.seed)
    for j, rec in enumerate(records):  # pushed onto a training patch of its own class: cosine distance 0 there
        assert ds[rec["image"]][1] == model.prototype_class(j) and rec["patch"] and rec["receptive_field_box"]
        assert abs(rec["similarity"] - 1) < 1e-4

    img = ds[0][0].permute(1, 2, 0).numpy()
    png = tmp_path / "shape.png"
    Image.fromarray((img * 255).round().astype(np.uint8)).save(png)
    for method in ("mdm", "upsample"):
        out = tmp_path / method
        assert main(["localize", "--model", "cosine_protopnet", "--ckpt", str(ckpt), "--image", str(png),
                     "--out", str(out), "--method", method, "--prototype", "0", "--steps", "40", "--device",
                     "cpu"]) == 0
        record = json.loads((out / "shape_localization.json").read_text())
        assert record["model"]["architecture"] == "cosine_protopnet"
        assert record["status"] == "ok" and record["method"] == method and record["box"]
    assert main(["localize", "--report", "--ckpt", str(ckpt), "--image", str(png), "--out", str(tmp_path / "report"),
                 "--top-k", "2", "--method", "upsample", "--device", "cpu"]) == 0
    report = json.loads(next((tmp_path / "report").glob("*_report.json")).read_text())
    assert len(report["rows"]) == 2 and all(r["source"] for r in report["rows"])
