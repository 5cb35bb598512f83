"""Shared fixtures and helpers: tiny models and checkpoints that the tests make themselves, a small training config,
a miniature NIH copy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protomdm import ModelConfig, build_model, save_checkpoint
from protomdm.models import list_architectures
from protomdm.training.config import TrainConfig, load_train_config

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_config(architecture: str = "protopnet", **kw) -> ModelConfig:
    base = dict(architecture=architecture, backbone="tiny", class_names=("a", "b", "c"), prototypes_per_class=2,
                prototype_dim=16, img_size=(48, 48))
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(architecture: str = "protopnet", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(tiny_config(architecture, **kw)).eval()


@pytest.fixture(params=list_architectures())
def architecture(request) -> str:
    return request.param


@pytest.fixture
def ckpt_path(tmp_path: Path, architecture: str) -> Path:
    return save_checkpoint(tiny_model(architecture), tmp_path / f"{architecture}.pt")


@pytest.fixture
def png_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    p = tmp_path / "scan.png"
    Image.fromarray((rng.random((70, 90)) * 255).astype(np.uint8)).save(p)
    return p


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA / name
    if not p.is_dir():
        pytest.skip(f"real sample data not present: {p}")
    return p

NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"  # the publisher's header, trailing commas included

def nih_copy(tmp_path, rows, images=("a.png", "b.png")):
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    (root / "BBox_List_2017.csv").write_text(NIH_HEADER + "".join(rows))
    for name in images:
        Image.fromarray(np.full((1024, 1024), 100, np.uint8)).save(root / "images_001" / "images" / name)
    return root


def small_config(architecture="protopnet", **optim) -> TrainConfig:
    cfg = load_train_config(CONFIGS / f"synthetic_{architecture}.yaml")
    cfg.model = dataclasses.replace(cfg.model, img_size=(32, 32), prototype_dim=8)
    cfg.data = dataclasses.replace(cfg.data, num_train=48, num_test=24, batch_size=16)
    cfg.optim = dataclasses.replace(cfg.optim, **{"warm_epochs": 1, "joint_epochs": 2, "last_layer_epochs": 1,
                                                  "push_epochs": (), **optim})
    return cfg
