"""Localizing a prototype in images: two lines in your own script (``protomdm.localize_prototype(model, image,
j)``), and the job behind ``protomdm localize`` (:class:`LocalizeJob`: load once, localize images, write outputs)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.images import LoadedImage, read_image, to_model_input
from ..device import resolve_device
from ..errors import UserError
from ..explain import Localization, PrototypeSelector, create_localizer
from ..explain.case import class_probabilities
from ..explain.localization import model_device
from ..explain.registry import MethodConfigs, method_settings, settings_record, with_mdm
from ..explain.selectors import choose_prototype
from ..files import check_writable, write_json
from ..geometry import check_percentile, resize_heatmap
from ..integrations.protopnet import as_prototype_model
from ..models import PrototypeModel, load_model
from ..report.dicom import Finding
from ..report.figures import resize_mask, save_mask_png, save_overlay
from ..report.names import has_dicom_outputs, is_dicom, output_names, output_stem
from ..runfolder import STAGING


def localize_prototype(model: nn.Module, image: torch.Tensor, prototype: int, method: str = "mdm",
                       reduce: str = "score", progress: bool = False, **settings) -> Localization:
    """Localize prototype ``prototype`` of ``model`` in one image.

    Args:
        model: a protomdm ProtoPNet/XProtoNet, or any model with the original ProtoPNet interface (wrapped with
            :class:`~protomdm.integrations.ProtoPNetAdapter`).
        image: ``(C, H, W)`` or ``(1, C, H, W)``, already normalised as the model expects.
        method: a registered localizer: ``"mdm"``, ``"upsample"``, a Grad-CAM family name (``"gradcam"``...); see
            :func:`protomdm.explain.list_localizers`.
        reduce: what MDM keeps: ``"score"`` (the max-pooled similarity) or ``"map"``.
        **settings: the method's settings (MDM: ``steps=500``, ``lambda_l1=...``, see :class:`~protomdm.MDMConfig`).

    Returns:
        a :class:`~protomdm.Localization`: ``heatmap (H, W)`` in [0, 1], ``binary(p)``, ``box(p)``.
    """
    model = as_prototype_model(model)
    selector = PrototypeSelector(model, prototype, reduce)
    try:
        localizer = create_localizer(method, progress=progress, **settings)
    except TypeError as e:  # keywords a method without settings does not take
        raise UserError(f"method {method!r} takes no settings {', '.join(settings)} ({e})") from None
    return localizer.localize(image, selector)


@dataclass
class LocalizeResult:
    localization: Localization
    record: dict[str, Any]
    files: dict[str, Path]


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
    method_configs: MethodConfigs = field(default_factory=dict)  # each method's settings by name
    keep_phi: bool = False
    progress: bool = False

    @classmethod
    def load(cls, ckpt: str | Path, *, architecture: str | None = None, device: str = "cpu", method: str = "mdm",
             percentile: float = 90.0, trust_pickle: bool = False, code_dir: str | Path | None = None,
             **kw) -> "LocalizeJob":
        """Check the settings and load the checkpoint (before any image is touched). ``trust_pickle`` loads a
        whole pickled model with the original ProtoPNet interface (this runs code from the file), importing its
        classes from ``code_dir``. ``mdm=`` is the older name of ``method_configs={"mdm": ...}``."""
        check_percentile(percentile)
        kw["method_configs"] = with_mdm(kw.get("method_configs"), kw.pop("mdm", None))
        method_settings(method, kw["method_configs"].get(method))  # an unknown method or bad settings: said now
        if code_dir is not None and not trust_pickle:
            raise UserError("`code_dir` is only used with `trust_pickle`")
        if trust_pickle:
            from ..models.checkpoint import load_pickled_model

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
                "mdm" if self.method == "mdm" else "method_settings": settings_record(self.method, self.method_configs)}

    def localize_images(self, images: list[LoadedImage]) -> list[tuple[int, Localization, float]]:
        """Choose each image's prototype and localize them all in one search: ``(prototype, localization,
        probability of the prototype's class)`` per image."""
        model = self.model
        x = torch.cat([to_model_input(im, model.config) for im in images]).to(model_device(model))
        protos = [choose_prototype(model, x[i:i + 1], self.prototype, self.class_name) for i in range(len(images))]
        with torch.no_grad():
            probs = class_probabilities(model, model(x).float())
        sel = PrototypeSelector(model, sorted(set(protos)))
        pairs = [(i, sel.indices.index(j)) for i, j in enumerate(protos)]
        locs = create_localizer(self.method, self.method_configs.get(self.method), progress=self.progress
                                ).localize(x, sel, pairs)
        return [(j, loc, float(probs[i, model.prototype_class(j)])) for i, (j, loc) in enumerate(zip(protos, locs))]

    def run(self, image: LoadedImage, out: Path, stem: str) -> LocalizeResult:
        """Localize in ``image`` and write :func:`output_names` into the existing folder ``out``."""
        ((j, loc, probability),) = self.localize_images([image])
        return self.write(image, j, loc, probability, out, stem)

    def write(self, image: LoadedImage, j: int, loc: Localization, probability: float, out: Path,
              stem: str) -> LocalizeResult:
        """Write prototype ``j``'s localization ``loc`` in ``image`` (``probability``: the model's for the
        prototype's class): :func:`output_names` in the folder ``out``."""
        model = self.model
        size = image.size
        mask = resize_mask(loc.binary(self.percentile), size)
        where = loc.in_original(size, self.percentile)  # box, box_input, regions
        box, regions = where["box"], where["regions"]
        c = model.prototype_class(j)
        dicom = is_dicom(image)
        record = {
            "image": stem if dicom else str(image.source),
            "image_size": list(size), "input_size": list(loc.heatmap.shape),
            "model": {"architecture": model.config.architecture, "backbone": model.config.backbone,
                      "checkpoint": self.checkpoint},
            "prototype": j, "class_index": c, "class_name": model.class_names[c], "class_probability": probability,
            "score": loc.score, "percentile": self.percentile,
            **where,
            "pixel_spacing": list(image.pixel_spacing) if image.pixel_spacing else None,
            **loc.summary(),
        }
        # an empty result has no segment to send to a viewer; a source without a UID cannot be referenced
        dicom_out = loc.ok and has_dicom_outputs(image)
        if dicom and loc.ok and not dicom_out:
            warnings.warn(f"{stem}: the DICOM has no SOP Instance UID, so no SEG or SR can refer to it; wrote the "
                          "PNG and JSON outputs only", stacklevel=2)
        files = {k: out / n for k, n in output_names(stem, dicom_out).items()}
        label = f"{self.method} prototype {j} ({model.class_names[c]})"
        n = len(regions)
        title = (f"{label}, top {100 - self.percentile:g}%: {n} region{'s' if n != 1 else ''}" if loc.ok
                 else f"{label}: empty ({loc.reason})")
        # DICOM first: every object is built before any is written, so a refusal leaves no file behind
        if dicom_out:
            scale = size[0] * size[1] / (loc.heatmap.shape[0] * loc.heatmap.shape[1])
            finding = Finding(label, model.class_names[c], probability, self.method, loc.settings or {},
                              [{"box": r["box"], "area": r["area"] * scale, "peak": r["peak"]} for r in regions],
                              image.pixel_spacing)
            write_dicom(image, mask, resize_heatmap(loc.heatmap, size), files, finding, self.keep_phi)
        save_overlay(files["overlay"], image.pixels, loc.heatmap, box, title, [r["box"] for r in regions])
        save_mask_png(files["mask"], mask)
        write_json(files["localization"], record)
        return LocalizeResult(loc, record, files)


def write_dicom(image: LoadedImage, mask: np.ndarray, heatmap: np.ndarray, files: dict[str, Path], finding: Finding,
                keep_phi: bool) -> None:
    """Write the DICOM outputs of ``finding`` for the DICOM ``image`` (``files["seg"]``, ``["heatmap"]``,
    ``["sr"]``); highdicom's refusals of the source's attributes become one :class:`UserError` line."""
    from ..report.dicom import write_dicom_outputs

    try:
        write_dicom_outputs(image.source, mask, heatmap, files, finding, keep_phi=keep_phi)
    except Exception as e:  # noqa: BLE001 - highdicom's checks of the source's attributes, in its terms
        raise UserError(f"{image.source}: cannot write its DICOM outputs ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None


def localize_file(ckpt: str | Path, image_path: str | Path, out_dir: str | Path, *, architecture: str | None = None,
                  method: str = "mdm", prototype: int | None = None, class_name: str | None = None,
                  percentile: float = 90.0, method_configs: MethodConfigs | None = None, device: str = "cpu",
                  overwrite: bool = False, progress: bool = False, keep_phi: bool = False,
                  trust_pickle: bool = False, code_dir: str | Path | None = None, mdm: Any = None) -> LocalizeResult:
    """Localize one prototype in one image file and write ``{stem}_overlay.png``, ``{stem}_mask.png`` and
    ``{stem}_localization.json`` (box in the original image's pixels) to ``out_dir``; for a DICOM input also
    ``{stem}_seg.dcm`` (the mask), ``{stem}_heatmap.dcm`` (a fractional SEG) and ``{stem}_sr.dcm`` (the
    structured report), and ``stem`` is a hash of its SOP Instance UID. ``method_configs``: the method's settings
    by name (``{"rise": RISEConfig(masks=2000)}``; ``mdm=`` is the older name of its ``"mdm"`` entry)."""
    job = LocalizeJob.load(ckpt, architecture=architecture, device=device, method=method, percentile=percentile,
                           prototype=prototype, class_name=class_name, method_configs=with_mdm(method_configs, mdm),
                           keep_phi=keep_phi,
                           progress=progress, trust_pickle=trust_pickle, code_dir=code_dir)
    image = read_image(image_path)
    stem = output_stem(image)
    out = check_writable(out_dir, output_names(stem, is_dicom(image)).values(), overwrite)
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))  # all or nothing: a failure leaves no file behind
    try:
        res = job.run(image, staging, stem)
        for kind, written in res.files.items():
            os.replace(written, out / written.name)
            res.files[kind] = out / written.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return res
