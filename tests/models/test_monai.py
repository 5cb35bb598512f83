"""MONAI: the MONAI-style MDM call, MONAI networks as classifiers and backbones, and the README's pipeline."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

monai = pytest.importorskip("monai", reason="the monai extra is not installed")

from oracles import BoxOracle, oracle_image  # noqa: E402

from protomdm.evaluation.metrics import iou  # noqa: E402
from protomdm.geometry import box_mask  # noqa: E402
from protomdm.integrations.monai import MDM  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"
FAST = dict(sizes=(4, 6, 8), steps=4, gamma=0.0)


def test_mdm_takes_gradcams_arguments_and_returns_its_shape():
    from monai.networks.nets import DenseNet121
    from monai.visualize import GradCAM

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).eval()
    x = torch.rand(2, 1, 64, 64)
    layer = "class_layers.relu"
    cam = GradCAM(nn_module=net, target_layers=layer)(x, class_idx=None)
    ours = MDM(nn_module=net, target_layers=layer, **FAST)(x, class_idx=None)
    assert ours.shape == cam.shape == (2, 1, 64, 64)
    assert ours.dtype == cam.dtype and float(ours.min()) >= 0 and float(ours.max()) <= 1
    one = MDM(net, **FAST)(x, class_idx=2)  # one class for every image, as MONAI accepts
    assert one.shape == (2, 1, 64, 64)
    from monai.networks.nets import resnet18

    resnet = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2).eval()
    assert MDM(resnet, **FAST)(x, class_idx=[0, 1]).shape == (2, 1, 64, 64)  # a class per image


def test_mdm_finds_the_oracles_box_with_monais_call():
    heat = MDM(BoxOracle((36, 8, 56, 28)), steps=300)(oracle_image(), class_idx=0)
    mask = heat[0, 0].numpy() >= np.percentile(heat[0, 0].numpy(), 90)
    assert iou(mask, box_mask((36, 8, 56, 28), (64, 64))) >= 0.5


def test_mdm_refuses_volumes_and_mismatched_classes():
    from protomdm.errors import UserError

    with pytest.raises(UserError, match="2D images"):
        MDM(BoxOracle((0, 0, 4, 4)), **FAST)(torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(UserError, match="2 targets given for 1 images"):
        MDM(BoxOracle((36, 8, 56, 28)), **FAST)(oracle_image(), class_idx=[0, 1])


def test_monai_densenet_backbone_builds_a_prototype_network():
    from conftest import tiny_model

    for arch in ("protopnet", "xprotonet"):
        model = tiny_model(arch, backbone="monai_densenet121", img_size=(32, 32))
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_the_readme_monai_pipeline_runs(tmp_path, monkeypatch):
    """The README's MONAI example, run as it stands (a tiny network in place of a trained one)."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "monai.transforms" in b)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((80, 96)) * 255).astype(np.uint8)).save(tmp_path / "scan.png")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = monai.networks.nets.DenseNet(spatial_dims=2, in_channels=1, out_channels=2, init_features=4,
                                       growth_rate=4, block_config=(1, 1)).eval()
    assert "MDM(net)" in block
    scope = {"net": net, "FAST": FAST}
    exec(compile(block.replace("MDM(net)", "MDM(net, **FAST)"), "README.md", "exec"), scope)  # a few steps only
    assert scope["heatmap"].shape == (1, 1, 128, 128)
