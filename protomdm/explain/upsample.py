"""The networks' own prototype search: upsample the feature-level map to the input and keep its top percentile."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .localization import Localization, Localizer, eval_mode, model_device
from .registry import register_localizer
from .selectors import Selector


@register_localizer("upsample", needs_prototypes=True)
class UpsampleLocalizer(Localizer):
    """ProtoPNet's localisation (``find_high_activation_crop``): the prototype's activation map (ProtoPNet: its
    similarity map; XProtoNet: its occurrence map) upsampled bicubically to the input size, scaled to [0, 1].

    The top-percentile region (default 95, as ProtoPNet) is :meth:`Localization.binary`.
    """

    def __init__(self, mode: str = "bicubic") -> None:
        if mode not in ("bicubic", "bilinear", "nearest"):
            raise UserError(f"mode must be bicubic, bilinear or nearest, got {mode!r}")
        self.mode = mode

    def localize_many(self, images: torch.Tensor, selector: Selector) -> list[list[Localization]]:
        """``result[b][k]`` for every image of ``images: (B, C, H, W)`` and target of ``selector``."""
        if not hasattr(selector, "localization_map"):
            raise UserError(f"the upsampling search needs a prototype selector, not a {selector.kind} selector; "
                            "use mdm or a Grad-CAM method")
        t0 = time.perf_counter()
        x = images.to(model_device(selector.model))
        with eval_mode(selector.model), torch.no_grad():
            maps = selector.localization_map(x).float()  # (B, K, h, w)
            t = selector.targets(x).float()
            scores = t.reshape(*t.shape[:2], -1).mean(2)  # (B, K)
        kwargs = {} if self.mode == "nearest" else {"align_corners": False}
        up = F.interpolate(maps, size=x.shape[-2:], mode=self.mode, **kwargs).cpu().numpy()
        seconds = (time.perf_counter() - t0) / max(1, up.shape[0] * up.shape[1])
        out = []
        for b in range(up.shape[0]):
            row = []
            for k in range(up.shape[1]):
                h = up[b, k].astype(np.float64)
                lo, hi = h.min(), h.max()
                h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
                row.append(Localization(h.astype(np.float32), "upsample", float(scores[b, k]),
                                        {"mode": self.mode, "selector": selector.single(k).describe()},
                                        seconds, str(x.device)))
            out.append(row)
        return out
