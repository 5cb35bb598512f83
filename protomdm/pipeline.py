"""End-to-end jobs behind the CLI: load a model and an image, pick what to explain, localize, write the outputs."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import MDMConfig, ModelConfig
from .data.images import LoadedImage, box_to_original, read_image, to_model_input
from .errors import UserError
from .explain import Localization, PrototypeSelector, create_localizer
from .explain.registry import localizer_entry
from .explain.localization import model_device
from .models import PrototypeModel, build_model, load_model, save_checkpoint
from .report.figures import check_writable, resize_map, save_mask_png, save_overlay, write_json


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA where there is none is a UserError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
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
    """The localizer registered as ``method`` (see :mod:`protomdm.explain.registry`), with ``mdm`` as MDM's
    settings."""
    return create_localizer(method, mdm, progress=progress)


def safe_name(text: str) -> str:
    """``text`` with every character but letters, digits and ``-_.`` replaced by ``_``: safe as a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def output_stem(image: LoadedImage) -> str:
    """A file-name stem for an image's outputs that carries no patient data (a hash for DICOM)."""
    uid = image.metadata.get("sop_instance_uid")
    if uid:
        return "dcm-" + hashlib.sha256(str(uid).encode()).hexdigest()[:16]
    return safe_name(image.source.stem) or "image"


@dataclass
class LocalizeResult:
    localization: Localization
    record: dict[str, Any]
    files: dict[str, Path]


def output_names(stem: str, dicom: bool) -> dict[str, str]:
    """The files written for one image: overlay, mask and JSON, plus a DICOM SEG and Parametric Map for DICOM."""
    kinds = [("overlay", "png"), ("mask", "png"), ("localization", "json")]
    if dicom:
        kinds += [("seg", "dcm"), ("heatmap_pm", "dcm")]
    return {k: f"{stem}_{k}.{ext}" for k, ext in kinds}


def is_dicom(image: LoadedImage) -> bool:
    return image.metadata.get("format") == "dicom"


@dataclass
class LocalizeJob:
    """What to explain and how, for one model: shared by single-image and folder runs.

    ``model`` is loaded once; :meth:`run` localizes one read image and writes its outputs to a folder.
    """

    model: PrototypeModel
    checkpoint: str
    method: str = "mdm"
    prototype: int | None = None
    class_name: str | None = None
    percentile: float = 90.0
    mdm: MDMConfig | None = None
    keep_phi: bool = False
    progress: bool = False

    @classmethod
    def load(cls, ckpt: str | Path, *, architecture: str | None = None, device: str = "cpu", method: str = "mdm",
             percentile: float = 90.0, trust_pickle: bool = False, code_dir: str | Path | None = None,
             **kw) -> "LocalizeJob":
        """Check the settings and load the checkpoint (before any image is touched). ``trust_pickle`` loads a
        whole pickled model with the original ProtoPNet interface (this runs code from the file), importing its
        classes from ``code_dir``."""
        check_percentile(percentile)
        localizer_entry(method)  # an unknown name is refused before the checkpoint is read
        if code_dir is not None and not trust_pickle:
            raise UserError("--code-dir is only used with --trust-pickle")
        if trust_pickle:
            from .integrations import as_prototype_model
            from .models.checkpoint import load_pickled_model

            model = as_prototype_model(load_pickled_model(ckpt, code_dir, resolve_device(device)))
        else:
            model = load_model(ckpt, resolve_device(device), architecture=architecture)
        if kw.get("prototype") is not None:
            model.check_prototype(kw["prototype"])
        return cls(model, str(ckpt), method, percentile=percentile, **kw)

    def settings(self) -> dict[str, Any]:
        """What decides a result: recorded by folder runs, which ``--resume`` only with the same settings."""
        return {"checkpoint": self.checkpoint, "method": self.method, "prototype": self.prototype,
                "class": self.class_name, "percentile": self.percentile, "keep_phi": self.keep_phi,
                "mdm": dataclasses.asdict(self.mdm or MDMConfig()) if self.method == "mdm" else None}

    def localize_images(self, images: list[LoadedImage]) -> list[tuple[int, Localization]]:
        """Choose each image's prototype and localize them all in one search: ``(prototype, localization)`` per
        image."""
        model = self.model
        x = torch.cat([to_model_input(im, model.config) for im in images]).to(model_device(model))
        protos = [choose_prototype(model, x[i:i + 1], self.prototype, self.class_name) for i in range(len(images))]
        sel = PrototypeSelector(model, sorted(set(protos)))
        pairs = [(i, sel.indices.index(j)) for i, j in enumerate(protos)]
        return list(zip(protos, make_localizer(self.method, self.mdm, self.progress).localize_pairs(x, sel, pairs)))

    def run(self, image: LoadedImage, out: Path, stem: str) -> LocalizeResult:
        """Localize in ``image`` and write :func:`output_names` into the existing folder ``out``."""
        ((j, loc),) = self.localize_images([image])
        return self.write(image, j, loc, out, stem)

    def write(self, image: LoadedImage, j: int, loc: Localization, out: Path, stem: str) -> LocalizeResult:
        """Write prototype ``j``'s localization ``loc`` in ``image``: :func:`output_names` in the folder ``out``."""
        model = self.model
        size = image.size
        heat = resize_map(loc.heatmap, size)
        mask = resize_map(loc.binary(self.percentile).astype(np.float32), size) >= 0.5
        box_in = loc.box(self.percentile)
        box = box_to_original(box_in, loc.heatmap.shape, size) if box_in else None
        regions = [{**r.as_dict(), "box": list(box_to_original(r.box, loc.heatmap.shape, size)),
                    "box_input": list(r.box)} for r in loc.regions(self.percentile)]
        c = model.prototype_class(j)
        dicom = is_dicom(image)
        record = {
            "image": stem if dicom else str(image.source),
            "image_size": list(size), "input_size": list(loc.heatmap.shape),
            "model": {"architecture": model.config.architecture, "backbone": model.config.backbone,
                      "checkpoint": self.checkpoint},
            "prototype": j, "class_index": c, "class_name": model.class_names[c],
            "score": loc.score, "percentile": self.percentile,
            "box": list(box) if box else None, "box_input": list(box_in) if box_in else None,
            "regions": regions,
            "pixel_spacing": list(image.pixel_spacing) if image.pixel_spacing else None,
            **loc.summary(),
        }
        files = {k: out / n for k, n in output_names(stem, dicom and loc.ok).items()}
        label = f"{self.method} prototype {j} ({model.class_names[c]})"
        n = len(regions)
        title = (f"{label}, top {100 - self.percentile:g}%: {n} region{'s' if n != 1 else ''}" if loc.ok
                 else f"{label}: empty ({loc.reason})")
        save_overlay(files["overlay"], image.pixels, heat, box, title, [r["box"] for r in regions])
        save_mask_png(files["mask"], mask)
        if dicom and loc.ok:  # an empty result has no segment to send to a viewer
            from .report.dicom import write_dicom_outputs

            try:
                write_dicom_outputs(image.source, mask, np.clip(heat, 0, 1), files["seg"], files["heatmap_pm"],
                                    label, keep_phi=self.keep_phi)
            except Exception as e:  # noqa: BLE001 - highdicom's checks of the source's attributes, in its terms
                raise UserError(f"{image.source}: cannot write its DICOM SEG and Parametric Map ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]})") from None
        write_json(files["localization"], record)
        return LocalizeResult(loc, record, files)


def localize_file(ckpt: str | Path, image_path: str | Path, out_dir: str | Path, *, architecture: str | None = None,
                  method: str = "mdm", prototype: int | None = None, class_name: str | None = None,
                  percentile: float = 90.0, mdm: MDMConfig | None = None, device: str = "cpu",
                  overwrite: bool = False, progress: bool = False, keep_phi: bool = False,
                  trust_pickle: bool = False, code_dir: str | Path | None = None) -> LocalizeResult:
    """Localize one prototype in one image file and write ``{stem}_overlay.png``, ``{stem}_mask.png`` and
    ``{stem}_localization.json`` (box in the original image's pixels) to ``out_dir``; for a DICOM input also
    ``{stem}_seg.dcm`` and ``{stem}_heatmap_pm.dcm``, and ``stem`` is a hash of its SOP Instance UID."""
    job = LocalizeJob.load(ckpt, architecture=architecture, device=device, method=method, percentile=percentile,
                           prototype=prototype, class_name=class_name, mdm=mdm, keep_phi=keep_phi,
                           progress=progress, trust_pickle=trust_pickle, code_dir=code_dir)
    image = read_image(image_path)
    stem = output_stem(image)
    out = check_writable(out_dir, output_names(stem, is_dicom(image)).values(), overwrite)
    return job.run(image, out, stem)


def init_model(out: str | Path, architecture: str, backbone: str, classes: list[str], prototypes_per_class: int = 10,
               img_size: int = 224, prototype_dim: int | None = None, in_channels: int = 3, pretrained: bool = False,
               overwrite: bool = False, seed: int = 0) -> Path:
    """Write an untrained checkpoint (random weights, or a pretrained backbone if asked)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the checkpoint file to write")
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
    try:
        return save_checkpoint(model, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
