"""CaBRNet both ways: a CaBRNet ProtoPNet (built from its own configuration) localized by protomdm from its model
directory, its upsampling equal to CaBRNet's ``cubic_upsampling``, and protomdm's MDM called from CaBRNet's
visualizer. Skips without CaBRNet (CI installs its import path: see .ci/run)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("cabrnet")
try:
    from cabrnet.archs.generic.model import CaBRNet
    from cabrnet.core.visualization.upsampling import cubic_upsampling
    from cabrnet.core.visualization.visualizer import SimilarityVisualizer
except ImportError as e:  # a partial install
    pytest.skip(f"CaBRNet's import path is incomplete here ({e.name})", allow_module_level=True)

from protomdm.cli import main  # noqa: E402
from protomdm.explain import PrototypeSelector, UpsampleLocalizer  # noqa: E402
from protomdm.integrations.cabrnet import CaBRNetAdapter, load_cabrnet, register_attributions  # noqa: E402
from protomdm.models import load_model  # noqa: E402

SIZE = 64
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
CONFIG = {
    "top_arch": {"module": "cabrnet.archs.protopnet.model", "name": "ProtoPNet"},
    "extractor": {"backbone": {"arch": "resnet18", "layer": "layer3", "weights": "None"},
                  "add_on": {"conv1": {"type": "Conv2d", "params": {"out_channels": 16, "kernel_size": 1,
                                                                     "bias": False}},
                             "sigmoid1": {"type": "Sigmoid"}}},
    "similarity": {"name": "ProtoPNetSimilarity"},
    "classifier": {"module": "cabrnet.archs.protopnet.decision", "name": "ProtoPNetClassifier",
                   "params": {"num_classes": 3, "num_proto_per_class": 2, "proto_init_mode": "SHIFTED_NORMAL"}},
}
DATASET = {"test_set": {"module": "torchvision.datasets", "name": "ImageFolder", "params": {"root": "x", "transform": {
    "resize": {"type": "Resize", "params": {"size": [SIZE, SIZE]}}, "to_tensor": {"type": "ToTensor"},
    "normalize": {"type": "Normalize", "params": {"mean": MEAN, "std": STD}}}}}}


@pytest.fixture(scope="module")
def cabrnet_dir(tmp_path_factory):
    """A CaBRNet ProtoPNet with random weights, saved as `cabrnet train` leaves a model directory."""
    torch.manual_seed(0)
    model = CaBRNet.build_from_config(copy.deepcopy(CONFIG)).eval()
    d = tmp_path_factory.mktemp("cabrnet_model")
    (d / "model_arch.yml").write_text(yaml.safe_dump(CONFIG))
    (d / "dataset.yml").write_text(yaml.safe_dump(DATASET))
    torch.save(model.state_dict(), d / "model_state.pth")
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    img.save(d.parent / "photo.png")
    x = (torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1) - 0.5) / 0.25
    return d, model, img, x


def test_a_cabrnet_model_directory_loads_as_a_prototype_network(cabrnet_dir):
    d, model, _, x = cabrnet_dir
    net = load_model(d)  # the same entry point as protomdm checkpoints
    assert isinstance(net, CaBRNetAdapter) and net.config.img_size == (SIZE, SIZE) and net.config.mean == tuple(MEAN)
    assert net.num_prototypes == 6 and net.prototype_class(5) == 2
    with torch.no_grad():
        assert torch.allclose(net.prototype_similarity_maps(x[None]), model.similarities(x[None]))
        assert torch.allclose(net(x[None]), model(x[None])[0])
        weight, bias = net.class_connections()
        assert torch.allclose(net.prototype_scores(x[None]) @ weight.t() + bias, net(x[None]), atol=1e-5)


@pytest.mark.parametrize("method", ["mdm", "upsample"])
def test_protomdm_localize_reads_a_cabrnet_model_directory(cabrnet_dir, tmp_path, method):
    d, *_ = cabrnet_dir
    assert main(["localize", "--ckpt", str(d), "--image", str(d.parent / "photo.png"), "--out", str(tmp_path),
                 "--method", method, "--prototype", "1", "--steps", "20", "--device", "cpu", "--quiet"]) == 0
    record = json.loads((tmp_path / "photo_localization.json").read_text())
    assert record["status"] == "ok" and record["method"] == method and record["box"]
    assert record["model"]["backbone"] == "cabrnet:ProtoPNet"


def test_upsampling_equals_cabrnets_cubic_upsampling(cabrnet_dir):
    d, model, img, x = cabrnet_dir
    net = load_cabrnet(d)
    for j in range(net.num_prototypes):
        theirs = cubic_upsampling(model, img, x, j, "cpu", normalize=True)
        ours = UpsampleLocalizer().localize(x, PrototypeSelector(net, j)).heatmap
        # the same bicubic kernel (a = -0.75, half-pixel centres, clamped at the border): equal to 5e-7 here
        assert np.abs(ours - theirs).max() < 1e-5


def test_mdm_from_cabrnets_own_visualizer_config(cabrnet_dir):
    _, model, img, x = cabrnet_dir
    assert "protomdm_mdm" in register_attributions()
    vis = SimilarityVisualizer.build_from_config(
        {"attribution": {"type": "protomdm_mdm", "params": {"steps": 20, "normalize": True}},
         "view": {"type": "heatmap"}}, model)
    heat = vis.get_attribution(img=img, img_tensor=x, proto_idx=1, device="cpu")
    assert heat.shape == (SIZE, SIZE) and heat.min() == 0 and heat.max() == pytest.approx(1)
    assert isinstance(vis(img=img, img_tensor=x, proto_idx=1, device="cpu"), Image.Image)
