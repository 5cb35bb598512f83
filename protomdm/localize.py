"""Two lines in your own script: ``protomdm.localize_prototype(model, image, j)``."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import MDMConfig
from .errors import UserError
from .explain import Localization, PrototypeSelector, UpsampleLocalizer
from .explain.mdm import MDMLocalizer
from .integrations.protopnet import as_prototype_model

MDM_SETTINGS = {f.name for f in dataclasses.fields(MDMConfig)}


def localize_prototype(model: nn.Module, image: torch.Tensor, prototype: int, method: str = "mdm",
                       reduce: str = "score", progress: bool = False, **settings) -> Localization:
    """Localize prototype ``prototype`` of ``model`` in one image.

    Args:
        model: a protomdm ProtoPNet/XProtoNet, or any model with the original ProtoPNet interface (wrapped with
            :class:`~protomdm.integrations.ProtoPNetAdapter`).
        image: ``(C, H, W)`` or ``(1, C, H, W)``, already normalised as the model expects.
        method: ``"mdm"``, ``"upsample"``, or a Grad-CAM family name (``"gradcam"``, ``"gradcampp"``, ...).
        reduce: what MDM keeps: ``"score"`` (the max-pooled similarity) or ``"map"``.
        **settings: MDM settings (``steps=500``, ``lambda_l1=...``, see :class:`~protomdm.MDMConfig`).

    Returns:
        a :class:`~protomdm.Localization`: ``heatmap (H, W)`` in [0, 1], ``binary(p)``, ``box(p)``.
    """
    model = as_prototype_model(model)
    selector = PrototypeSelector(model, prototype, reduce)
    if method == "mdm":
        unknown = sorted(set(settings) - MDM_SETTINGS)
        if unknown:
            raise UserError(f"unknown MDM setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(MDM_SETTINGS))}")
        return MDMLocalizer(MDMConfig(**settings), progress=progress).localize(image, selector)
    if settings:
        raise UserError(f"settings {', '.join(settings)} apply to method='mdm' only")
    if method == "upsample":
        return UpsampleLocalizer().localize(image, selector)
    from .explain.cam import CAMLocalizer

    return CAMLocalizer(method).localize(image, selector)
