"""Geometry of heatmaps: the top-percentile mask, boxes, and the connected regions of a mask.

Conventions: a heatmap is ``(H, W)`` float; a mask is ``(H, W)`` bool; percentile ``p`` keeps the top ``(100 - p)%``
of pixels, ``heatmap >= percentile(heatmap, p)`` as ProtoPNet's ``find_high_activation_crop`` does. A plateau of the
heatmap's minimum never counts as "top" (so a heatmap that is mostly zero keeps only its non-zero part), and a
constant heatmap, which says nothing about where, gives an empty mask. Boxes are ``(x0, y0, x1, y1)`` with
exclusive ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import UserError

Box = tuple[int, int, int, int]


def top_percentile_mask(heatmap: np.ndarray, percentile: float | Sequence[float]) -> np.ndarray:
    """Binary mask(s) of the heatmap's top ``(100 - p)%`` pixels.

    Args:
        heatmap: ``(H, W)``.
        percentile: one ``p`` in (0, 100), or a sequence of them.

    Returns:
        ``(H, W)`` bool for one percentile, ``(P, H, W)`` for a sequence.
    """
    ps = np.atleast_1d(np.asarray(percentile, dtype=np.float64))
    if np.any((ps <= 0) | (ps >= 100)):
        raise ValueError(f"percentile must lie strictly between 0 and 100, got {percentile}")
    h = np.asarray(heatmap, dtype=np.float64)
    lo, hi = h.min(), h.max()
    thresholds = np.percentile(h, ps)
    masks = h[None] >= thresholds[:, None, None]
    if hi <= lo:
        masks[:] = False
    else:
        masks &= h[None] > lo
    return masks[0] if np.ndim(percentile) == 0 else masks


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, ...], mode: str = "bilinear") -> np.ndarray:
    """``heatmap (h, w)`` as float32 at ``size`` (H, W): bilinear (or ``mode``: ``bicubic`` as CaBRNet), with
    ``align_corners=False``, as CheXlocalize's evaluator brings a saliency map to its image's size
    (``F.interpolate``); returned as float32 unchanged when already there."""
    import torch
    import torch.nn.functional as F

    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape == tuple(size):
        return h
    t = F.interpolate(torch.from_numpy(np.ascontiguousarray(h))[None, None], size=tuple(int(v) for v in size),
                      mode=mode, align_corners=False)
    return t[0, 0].numpy()


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of a ``(H, W)`` mask's True pixels; None if empty."""
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """A ``(H, W)`` bool mask, True inside ``box`` (exclusive ends, clipped to the image)."""
    m = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = box
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def _intersection(a: Box, b: Box) -> int:
    """Pixels two boxes (exclusive ends) share."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (exclusive ends)."""
    inter = _intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iobb(found: Box, truth: Box) -> float:
    """Intersection over the found box's own area (Wang et al. 2017's IoBB), exclusive ends; 0 for an empty box."""
    area = (found[2] - found[0]) * (found[3] - found[1])
    return _intersection(found, truth) / area if area > 0 else 0.0


@dataclass
class Region:
    """One connected region of a heatmap's top-percentile mask (8-connected).

    Attributes:
        box: ``(x0, y0, x1, y1)``, exclusive ends, in the heatmap's pixels.
        area: pixels in the region.
        peak: the heatmap's largest value in it.
        mean: its mean value in it.
        mass: the sum of the heatmap over it (regions are ranked by it).
    """

    box: Box
    area: int
    peak: float
    mean: float
    mass: float

    def as_dict(self) -> dict:
        return {"box": list(self.box), "area": self.area, "peak": round(self.peak, 4), "mean": round(self.mean, 4),
                "mass": round(self.mass, 4)}


def regions(heatmap: np.ndarray, percentile: float, mask: np.ndarray | None = None) -> list[Region]:
    """Every connected region of ``heatmap``'s top-percentile mask (``mask``, when already computed), largest heat
    mass first (scikit-image's ``measure.label`` and ``regionprops``, 8-connectivity)."""
    from skimage.measure import label, regionprops

    mask = top_percentile_mask(heatmap, percentile) if mask is None else mask
    found = []
    for r in regionprops(label(mask, connectivity=2), intensity_image=np.asarray(heatmap, dtype=np.float64)):
        y0, x0, y1, x1 = r.bbox
        vals = r.image_intensity[r.image]
        found.append(Region((int(x0), int(y0), int(x1), int(y1)), int(r.area), float(vals.max()), float(vals.mean()),
                            float(vals.sum())))
    return sorted(found, key=lambda r: -r.mass)


def check_percentile(p: float) -> float:
    """``p`` itself, refused (a UserError) unless strictly between 0 and 100."""
    if not 0 < p < 100:
        raise UserError(f"percentile must lie strictly between 0 and 100, got {p}")
    return p
