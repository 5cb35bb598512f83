"""Shared fixtures: tiny models and checkpoints that the tests make themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protomdm import ModelConfig, build_model, save_checkpoint
from protomdm.models import list_architectures

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
