"""End-to-end jobs behind the CLI: load a model and an image, pick what to explain, localize, write the outputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import MDMConfig, ModelConfig
from .data.images import LoadedImage, box_to_original, read_image, to_model_input
from .errors import UserError
from .explain import Localization, MDMLocalizer, PrototypeSelector, UpsampleLocalizer
from .models import PrototypeModel, build_model, load_model, save_checkpoint
from .report.figures import check_writable, resize_map, save_mask_png, save_overlay, write_json

METHODS = ("mdm", "upsample")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA where there is none is a UserError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available here; use --device cpu")
    return dev


def check_percentile(p: float) -> float:
    if not 0 < p < 100:
        raise UserError(f"percentile must lie strictly between 0 and 100, got {p}")
    return p


def choose_prototype(model: PrototypeModel, x: torch.Tensor, prototype: int | None, class_name: str | None) -> int:
    """The prototype to explain: ``prototype`` itself; else the most activated prototype of ``class_name``;
    else the most activated prototype of the top-scoring class."""
    if prototype is not None:
        return model.check_prototype(prototype)
    with torch.no_grad():
        scores = model.prototype_scores(x)[0]
        if class_name is None:
            c = int(model(x)[0].argmax())
        elif class_name in model.class_names:
            c = model.class_names.index(class_name)
        else:
            raise UserError(f"class {class_name!r} is not one of this model's classes: {', '.join(model.class_names)}")
    own = model.prototypes_of_class(c)
    return own[int(scores[own].argmax())]


def make_localizer(method: str, mdm: MDMConfig | None = None, progress: bool = False):
    if method == "mdm":
        return MDMLocalizer(mdm, progress=progress)
    if method == "upsample":
        return UpsampleLocalizer()
    raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def output_stem(image: LoadedImage) -> str:
    """A file-name stem for an image's outputs that carries no patient data (a hash for DICOM)."""
    uid = image.metadata.get("sop_instance_uid")
    if uid:
        return "dcm-" + hashlib.sha256(str(uid).encode()).hexdigest()[:16]
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in image.source.stem)
    return stem or "image"


@dataclass
class LocalizeResult:
    localization: Localization
    record: dict[str, Any]
    files: dict[str, Path]


def localize_file(ckpt: str | Path, image_path: str | Path, out_dir: str | Path, *, architecture: str | None = None,
                  method: str = "mdm", prototype: int | None = None, class_name: str | None = None,
                  percentile: float = 90.0, mdm: MDMConfig | None = None, device: str = "cpu",
                  overwrite: bool = False, progress: bool = False) -> LocalizeResult:
    """Localize one prototype in one image file and write ``{stem}_overlay.png``, ``{stem}_mask.png`` and
    ``{stem}_localization.json`` (box in the original image's pixels) to ``out_dir``."""
    check_percentile(percentile)
    dev = resolve_device(device)
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    model = load_model(ckpt, dev, architecture=architecture)
    image = read_image(image_path)
    stem = output_stem(image)
    names = {k: f"{stem}_{k}.{ext}" for k, ext in (("overlay", "png"), ("mask", "png"), ("localization", "json"))}
    out = check_writable(out_dir, names.values(), overwrite)
    x = to_model_input(image, model.config).to(dev)
    j = choose_prototype(model, x, prototype, class_name)
    loc = make_localizer(method, mdm, progress).localize(x, PrototypeSelector(model, j))

    size = image.size
    heat = resize_map(loc.heatmap, size)
    mask_in = loc.binary(percentile)
    mask = resize_map(mask_in.astype(np.float32), size) >= 0.5
    box_in = loc.box(percentile)
    box = box_to_original(box_in, loc.heatmap.shape, size) if box_in else None
    c = model.prototype_class(j)
    record = {
        "image": str(image.source) if "sop_instance_uid" not in image.metadata else stem,
        "image_size": list(size), "input_size": list(loc.heatmap.shape),
        "model": {"architecture": model.config.architecture, "backbone": model.config.backbone, "checkpoint": str(ckpt)},
        "prototype": j, "class_index": c, "class_name": model.class_names[c],
        "score": loc.score, "percentile": percentile,
        "box": list(box) if box else None, "box_input": list(box_in) if box_in else None,
        "pixel_spacing": list(image.pixel_spacing) if image.pixel_spacing else None,
        **loc.summary(),
    }
    files = {k: out / n for k, n in names.items()}
    title = f"{method}: prototype {j} ({model.class_names[c]}), top {100 - percentile:g}% box"
    save_overlay(files["overlay"], image.pixels, heat, box, title)
    save_mask_png(files["mask"], mask)
    write_json(files["localization"], record)
    return LocalizeResult(loc, record, files)


def init_model(out: str | Path, architecture: str, backbone: str, classes: list[str], prototypes_per_class: int = 10,
               img_size: int = 224, prototype_dim: int | None = None, in_channels: int = 3, pretrained: bool = False,
               overwrite: bool = False, seed: int = 0) -> Path:
    """Write an untrained checkpoint (random weights, or a pretrained backbone if asked)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    grey = in_channels == 1
    cfg = ModelConfig(architecture=architecture, backbone=backbone, class_names=tuple(classes),
                      prototypes_per_class=prototypes_per_class,
                      prototype_dim=prototype_dim or 128,
                      img_size=(img_size, img_size), in_channels=in_channels,
                      mean=(0.5,) if grey else (0.485, 0.456, 0.406), std=(0.25,) if grey else (0.229, 0.224, 0.225),
                      pretrained=pretrained)
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.config.pretrained = False  # the weights now live in the checkpoint
    return save_checkpoint(model, out)
