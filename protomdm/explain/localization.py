"""The one result type every localizer returns."""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import UserError
from ..geometry import Box, Region, mask_box, regions, top_percentile_mask


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
        status: ``"ok"``, or ``"empty"`` when there is nothing to show: the heatmap is zero or flat everywhere, or
            the explained activation does not depend on the image. ``box()`` is then None.
        reason: for an ``empty`` status, why, and what to try.
    """

    heatmap: np.ndarray
    method: str
    score: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    steps: int = 0
    status: str = "ok"
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status == "ok":
            self.reason = heatmap_problem(self.heatmap)
            if self.reason:
                self.status = "empty"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def binary(self, percentile: float = 90) -> np.ndarray:
        """``(H, W)`` bool mask of the top ``(100 - percentile)%`` of the heatmap."""
        return top_percentile_mask(self.heatmap, percentile)

    def box(self, percentile: float = 90) -> Box | None:
        """Bounding box ``(x0, y0, x1, y1)`` (input pixels, exclusive ends) of :meth:`binary`; None if empty."""
        return mask_box(self.binary(percentile)) if self.ok else None

    def regions(self, percentile: float = 90) -> list[Region]:
        """Every connected region of :meth:`binary` (box, area, peak and mean heat), largest heat mass first: two
        separate findings give two regions, where :meth:`box` spans both. Empty for an ``empty`` status."""
        return regions(self.heatmap, percentile) if self.ok else []

    def summary(self) -> dict[str, Any]:
        """JSON-safe metadata (everything but the heatmap)."""
        return {"method": self.method, "status": self.status, "reason": self.reason, "score": self.score,
                "settings": self.settings, "seconds": round(self.seconds, 4), "device": self.device,
                "steps": self.steps, "input_size": list(self.heatmap.shape)}


def heatmap_problem(heatmap: np.ndarray) -> str:
    """Why ``heatmap`` shows nothing (zero, flat or not finite everywhere), or "" when it shows something."""
    if not np.isfinite(heatmap).all():
        return "the heatmap has NaN or infinite values"
    lo, hi = float(heatmap.min()), float(heatmap.max())
    if hi <= 0:
        return "the heatmap is zero everywhere: no region keeps the explained activation"
    if hi - lo <= 1e-6 * hi:
        return "the heatmap is flat: every pixel scores the same"
    return ""


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


class Localizer(abc.ABC):
    """Base class of every localizer: subclasses implement :meth:`localize_many`; register one with
    :func:`protomdm.explain.registry.register_localizer` to make it a method of every command."""

    @abc.abstractmethod
    def localize_many(self, images: torch.Tensor, selector) -> list[list[Localization]]:
        """``result[b][k]``: the localisation of the selector's target ``k`` in image ``b`` of ``(B, C, H, W)``."""

    def localize_pairs(self, images: torch.Tensor, selector, pairs: list[tuple[int, int]]) -> list[Localization]:
        """Localize target ``k`` of ``selector`` in image ``b`` for every ``(b, k)`` of ``pairs``, in that order.

        The default localizes each image's targets together; a localizer that can put all pairs into one search
        (MDM) overrides it.
        """
        out: dict[tuple[int, int], Localization] = {}
        for b in sorted({b for b, _ in pairs}):
            ks = sorted({k for bb, k in pairs if bb == b})
            for k, loc in zip(ks, self.localize_many(images[b:b + 1], selector.subset(ks))[0]):
                out[(b, k)] = loc
        return [out[pair] for pair in pairs]

    def localize(self, image: torch.Tensor, selector) -> Localization:
        """Localize ``selector``'s single target in one ``image: (C, H, W)`` or ``(1, C, H, W)``."""
        x = image[None] if image.dim() == 3 else image
        if x.shape[0] != 1 or selector.num_targets != 1:
            raise UserError("localize() takes one image and one target; use localize_many() for batches")
        return self.localize_many(x, selector)[0][0]
