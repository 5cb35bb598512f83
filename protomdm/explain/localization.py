"""The one result type every localizer returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..evaluation.metrics import Box, mask_box, top_percentile_mask


@dataclass
class Localization:
    """Where the explained activation's evidence lies in one image.

    Attributes:
        heatmap: ``(H, W)`` float32 in [0, 1], at the model's input resolution.
        method: ``"mdm"``, ``"upsample"``, ``"gradcam"``...
        score: the explained activation on the unmasked image (its mean, if it is a map), or None.
        settings: the method's settings, as a plain dict.
        seconds: wall time of the search.
        device: where it ran.
        steps: optimisation steps taken (MDM: the largest over its masks), 0 for one-pass methods.
    """

    heatmap: np.ndarray
    method: str
    score: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    steps: int = 0

    def binary(self, percentile: float = 90) -> np.ndarray:
        """``(H, W)`` bool mask of the top ``(100 - percentile)%`` of the heatmap."""
        return top_percentile_mask(self.heatmap, percentile)

    def box(self, percentile: float = 90) -> Box | None:
        """Bounding box ``(x0, y0, x1, y1)`` (input pixels, exclusive ends) of :meth:`binary`; None if empty."""
        return mask_box(self.binary(percentile))

    def summary(self) -> dict[str, Any]:
        """JSON-safe metadata (everything but the heatmap)."""
        return {"method": self.method, "score": self.score, "settings": self.settings,
                "seconds": round(self.seconds, 4), "device": self.device, "steps": self.steps,
                "input_size": list(self.heatmap.shape)}
