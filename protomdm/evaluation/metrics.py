"""Localization metrics: pure, vectorised functions of heatmaps and masks (NumPy arrays).

Conventions: a heatmap is ``(H, W)`` float; a mask is ``(H, W)`` bool; the top-percentile mask, boxes and regions
are :mod:`protomdm.geometry`'s.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..geometry import Box, box_iobb, box_iou, box_mask, mask_box, top_percentile_mask  # noqa: F401 - re-exported


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives of ``pred (..., H, W)`` against ``truth (H, W)``."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = (pred & truth).sum((-2, -1))
    fp = (pred & ~truth).sum((-2, -1))
    fn = (~pred & truth).sum((-2, -1))
    return tp, fp, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray | float:
    """num / den, with 0/0 = 1 (both masks empty: perfect agreement) and x/0 = 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    return out if out.ndim else float(out)


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray | float:
    """Dice ``2TP / (2TP + FP + FN)`` of mask(s) ``(..., H, W)`` against ``truth (H, W)``."""
    tp, fp, fn = confusion_counts(pred, truth)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray | float:
    """Intersection over union ``TP / (TP + FP + FN)``."""
    tp, fp, fn = confusion_counts(pred, truth)
    return _ratio(tp, tp + fp + fn)


def ppv(pred: np.ndarray, truth: np.ndarray) -> np.ndarray | float:
    """Positive predictive value (precision) ``TP / (TP + FP)``."""
    tp, fp, _ = confusion_counts(pred, truth)
    return _ratio(tp, tp + fp)


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> np.ndarray | float:
    """Sensitivity (recall) ``TP / (TP + FN)``."""
    tp, _, fn = confusion_counts(pred, truth)
    return _ratio(tp, tp + fn)


MASK_METRICS = {"dice": dice, "iou": iou, "ppv": ppv, "sensitivity": sensitivity}


def localization_scores(heatmap: np.ndarray, truth: np.ndarray,
                        percentiles: Sequence[float]) -> dict[str, np.ndarray]:
    """Dice, IoU, PPV and Sensitivity of the heatmap's top-percentile masks, one value per percentile."""
    masks = top_percentile_mask(heatmap, list(percentiles))
    return {name: np.atleast_1d(fn(masks, truth)) for name, fn in MASK_METRICS.items()}


localisation_scores = localization_scores  # the earlier spelling, kept for existing callers


def area_scores(heatmap: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and IoU (``dice_area``, ``iou_area``) of the heatmap's top mask that keeps as many pixels as ``truth``
    holds: the object's own area, where a fixed percentile's Dice is capped by the object's size (a top-10% mask
    against an object covering 3% of the image reaches at most 0.46). Empty for an empty or full ``truth``."""
    share = float(np.asarray(truth, dtype=bool).mean())
    if not 0 < share < 1:
        return {}
    mask = top_percentile_mask(heatmap, min(max(100 * (1 - share), 1e-6), 100 - 1e-6))
    return {"dice_area": float(dice(mask, truth)), "iou_area": float(iou(mask, truth))}


def dice_ceiling(truth: np.ndarray, percentile: float) -> float:
    """The highest Dice that any top-``percentile`` mask (``(1 - percentile / 100)`` of the pixels) can reach against
    ``truth (H, W)``: ``2 min(k, a) / (k + a)`` for a mask of ``k`` pixels and an object of ``a``. Against an object
    of 2.5% of the image, a top-10% mask that contains all of it scores 0.40, however good the heatmap. (A heatmap
    whose zeros tie can give a smaller mask, and pass it.)"""
    t = np.asarray(truth, dtype=bool)
    a, k = float(t.sum()), t.size * (1 - percentile / 100)
    return 2 * min(k, a) / (k + a) if k + a else 1.0


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Area under the ROC curve per column of ``scores (N, C)`` against 0/1 ``labels (N, C)`` (scikit-learn's
    ``roc_auc_score``: ties count half; NaN labels, unknown, are left out); NaN for a column with only one label
    value."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        known = np.isin(labels[:, c], (0, 1))
        if len(np.unique(labels[known, c])) == 2:
            out[c] = roc_auc_score(labels[known, c], scores[known, c])
    return out


def pointing_game(heatmap: np.ndarray, truth: np.ndarray, tolerance: int = 0) -> bool:
    """Pointing game hit (Zhang et al. 2016): the heatmap's maximum (first in raster order when tied) lies in
    ``truth``, or within ``tolerance`` pixels of it (Chebyshev distance; the original uses 15 px). An empty truth
    is a miss."""
    h = np.asarray(heatmap)
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    t = np.asarray(truth, dtype=bool)
    r = int(tolerance)
    return bool(t[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].any())


def hit(heatmap: np.ndarray, truth: np.ndarray) -> float:
    """CheXlocalize's hit (Saporta et al. 2022): 1.0 if the heatmap's maximum (the first in raster order, as
    ``np.argmax``) lies in ``truth``, 0.0 if not, NaN when ``truth`` is empty. Both at the same size: CheXlocalize
    brings the map to the image's size first (:func:`~protomdm.geometry.resize_heatmap`)."""
    t = np.asarray(truth, dtype=bool)
    if not t.any():
        return float("nan")
    return float(t.flat[int(np.argmax(np.asarray(heatmap)))])


def average_drop(full: np.ndarray, masked: np.ndarray) -> float:
    """Average Drop in % (Chattopadhyay et al. 2018): ``100 * mean(max(0, Y - O) / Y)`` over explanations, with
    ``Y`` the score on the image and ``O`` on the image multiplied by the heatmap. Lower is better. Entries with
    ``Y <= 0`` (no evidence to keep) are left out; NaN if none remain."""
    y, o = np.asarray(full, np.float64).ravel(), np.asarray(masked, np.float64).ravel()
    ok = y > 0
    return float(100 * np.mean(np.maximum(0.0, y[ok] - o[ok]) / y[ok])) if ok.any() else float("nan")


def average_increase(full: np.ndarray, masked: np.ndarray) -> float:
    """Increase in Confidence in % (Chattopadhyay et al. 2018): how often ``O > Y``. Higher is better."""
    y, o = np.asarray(full, np.float64).ravel(), np.asarray(masked, np.float64).ravel()
    return float(100 * np.mean(o > y)) if y.size else float("nan")


def curve_auc(curve: np.ndarray) -> np.ndarray | float:
    """Area under deletion/insertion curve(s) ``(..., S + 1)`` sampled at fractions ``0, 1/S, ..., 1`` of the
    pixels (trapezoid rule, x from 0 to 1). Deletion: lower is better; insertion: higher is better."""
    c = np.asarray(curve, np.float64)
    out = np.trapezoid(c, dx=1 / (c.shape[-1] - 1), axis=-1)
    return out if out.ndim else float(out)


def part_hits(region: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Which object parts a prototype's region covers: ``(K,)`` bool, part ``k`` hit if it is visible and its
    keypoint lies in ``region (H, W)``. ``parts``: ``(K, 3)`` rows of x, y (pixels of ``region``), visible (0/1)."""
    parts = np.asarray(parts, np.float64).reshape(-1, 3)
    h, w = region.shape
    xi, yi = np.floor(parts[:, 0]).astype(int), np.floor(parts[:, 1]).astype(int)
    inside = (parts[:, 2] > 0) & (xi >= 0) & (yi >= 0) & (xi < w) & (yi < h)
    hits = np.zeros(len(parts), bool)
    hits[inside] = np.asarray(region, bool)[yi[inside], xi[inside]]
    return hits


def part_consistency(hits: np.ndarray, visible: np.ndarray, threshold: float = 0.8) -> float:
    """Consistency score (Huang et al., ICCV 2023) in %: the share of prototypes that cover one same part in at least
    ``threshold`` of the images (of their class) where that part is visible.

    Args:
        hits: ``(P, N, K)`` bool, prototype x image x part (see :func:`part_hits`).
        visible: ``(P, N, K)`` or ``(N, K)`` bool.
    """
    hits = np.asarray(hits, bool)
    vis = np.broadcast_to(np.asarray(visible, bool), hits.shape)
    n_vis = vis.sum(1)
    freq = np.where(n_vis > 0, (hits & vis).sum(1) / np.maximum(n_vis, 1), 0.0)  # (P, K)
    return float(100 * np.mean(freq.max(-1) >= threshold)) if len(hits) else float("nan")


def part_stability(hits: np.ndarray, hits_perturbed: np.ndarray) -> float:
    """Stability score (Huang et al., ICCV 2023) in %: how often a prototype covers exactly the same parts after the
    image is perturbed (e.g. Gaussian noise), averaged over images, then prototypes. Both ``(P, N, K)`` bool."""
    a, b = np.asarray(hits, bool), np.asarray(hits_perturbed, bool)
    return float(100 * np.mean(np.all(a == b, -1).mean(-1))) if a.size else float("nan")


def region_hit_rate(region_boxes: Sequence[Box], truth_boxes: Sequence[Box], threshold: float,
                    overlap: str = "iou") -> float:
    """Share of ground-truth boxes that some region's box overlaps by at least ``threshold``: ``overlap`` ``iou``
    (the hit rate that chest-X-ray detection papers report at IoU 0.1 and 0.3; Wang et al. 2017's T(IoU) accuracy)
    or ``iobb`` (the intersection over the region box's own area: their T(IoBB)); NaN without ground-truth boxes."""
    if not truth_boxes:
        return float("nan")
    measure = {"iou": box_iou, "iobb": box_iobb}[overlap]
    return float(np.mean([any(measure(r, t) >= threshold for r in region_boxes) for t in truth_boxes]))
