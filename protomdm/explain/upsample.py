"""The networks' own prototype search: upsample the feature-level map to the input and keep its top percentile."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .localization import Localizer, Maps, Pair
from .registry import register_localizer
from .selectors import Selector


@register_localizer("upsample", needs_prototypes=True)
class UpsampleLocalizer(Localizer):
    """ProtoPNet's localization (``find_high_activation_crop``): the prototype's activation map (ProtoPNet: its
    similarity map; XProtoNet: its occurrence map) upsampled bicubically to the input size, scaled to [0, 1].

    The top-percentile region (default 95, as ProtoPNet) is :meth:`Localization.binary`.
    """

    def __init__(self, mode: str = "bicubic") -> None:
        if mode not in ("bicubic", "bilinear", "nearest"):
            raise UserError(f"mode must be bicubic, bilinear or nearest, got {mode!r}")
        self.mode = mode

    method = "upsample"

    def settings(self) -> dict[str, str]:
        return {"mode": self.mode}

    def compute_maps(self, x: torch.Tensor, selector: Selector, pairs: list[Pair]) -> Maps:
        """The selector's ``localization_map`` ``(B, K, h, w)``, upsampled to the input size, for each pair."""
        if not hasattr(selector, "localization_map"):
            raise UserError(f"the upsampling search needs a prototype selector, not a {selector.kind} selector; "
                            "use mdm or a Grad-CAM method")
        with torch.no_grad():  # image by image: a map never depends on which images share its batch
            per_image = {b: selector.localization_map(x[b:b + 1]).float()[0] for b in sorted({b for b, _ in pairs})}
        maps = torch.stack([per_image[b][k] for b, k in pairs])  # (P, h, w)
        kwargs = {} if self.mode == "nearest" else {"align_corners": False}
        return Maps(F.interpolate(maps[:, None], size=x.shape[-2:], mode=self.mode, **kwargs)[:, 0])
