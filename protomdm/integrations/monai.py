"""MDM with MONAI's call: ``MDM(net)(x, class_idx=None) -> (B, 1, H, W)``, as ``monai.visualize.GradCAM``.

A MONAI pipeline that explains with ``GradCAM(nn_module=net, target_layers=...)(x, class_idx)`` switches to MDM by
changing the class: the same arguments (``target_layers`` is accepted and not needed), the same output, a heatmap
in [0, 1] per image at the input's size. MDM explains the class logit through the frozen network, masks
optimised with the MDMConfig settings given as keywords (``steps=``, ``lambda_l1=``...). 2D images only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import from_dict
from ..errors import UserError
from ..explain import MDMLocalizer
from ..explain.localization import Localization
from ..explain.mdm import MDMConfig
from ..explain.selectors import per_image_targets


class MDM:
    """Multiple Dynamic Mask saliency for any 2D classifier, called like MONAI's CAM classes.

    Args:
        nn_module: the classifier (a MONAI network or any ``nn.Module`` returning logits ``(B, C)``).
        target_layers: ignored (MDM needs no layer); accepted so that ``GradCAM(...)`` can be swapped for ``MDM(...)``.
        progress: show a progress bar over the optimisation steps.
        **mdm_settings: :class:`~protomdm.explain.mdm.MDMConfig` fields, e.g. ``steps=500``.

    After a call, :attr:`localizations` holds the full results (status, steps, seconds, boxes) of the last batch.
    """

    def __init__(self, nn_module: nn.Module, target_layers: str | Sequence[str] | None = None, *,
                 progress: bool = False, **mdm_settings) -> None:
        self.nn_module = nn_module
        self.localizer = MDMLocalizer(from_dict(MDMConfig, mdm_settings, where="MDM settings"), progress=progress)
        self.localizations: list[Localization] = []

    def __call__(self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        """Heatmaps ``(B, 1, H, W)`` in [0, 1] for ``x: (B, C, H, W)``: class ``class_idx`` (one for all images, one
        per image, or None for each image's predicted class)."""
        if x.dim() != 4:
            raise UserError(f"MDM explains 2D images (B, C, H, W); got a tensor of shape {tuple(x.shape)}")
        with torch.no_grad():
            logits = self.nn_module(x)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        wanted = logits.argmax(1) if class_idx is None else class_idx
        selector, pairs = per_image_targets(self.nn_module, wanted, x.shape[0], num_classes=int(logits.shape[1]))
        self.localizations = self.localizer.localize(x, selector, pairs)
        return torch.stack([torch.from_numpy(loc.heatmap) for loc in self.localizations])[:, None].to(x.device)
