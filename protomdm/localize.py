"""Two lines in your own script: ``protomdm.localize_prototype(model, image, j)``."""

from __future__ import annotations

import torch
from torch import nn

from .errors import UserError
from .explain import Localization, PrototypeSelector, create_localizer
from .integrations.protopnet import as_prototype_model


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
