"""The one result type every localizer returns."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import UserError
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


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run a block with ``model`` in eval mode, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


class Localizer:
    """Base class: subclasses implement ``localize_many(images (B, C, H, W), selector) -> result[b][k]``."""

    def localize_many(self, images: torch.Tensor, selector) -> list[list[Localization]]:
        raise NotImplementedError

    def localize(self, image: torch.Tensor, selector) -> Localization:
        """Localize ``selector``'s single target in one ``image: (C, H, W)`` or ``(1, C, H, W)``."""
        x = image[None] if image.dim() == 3 else image
        if x.shape[0] != 1 or selector.num_targets != 1:
            raise UserError("localize() takes one image and one target; use localize_many() for batches")
        return self.localize_many(x, selector)[0][0]
