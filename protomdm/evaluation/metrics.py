"""Localisation metrics: pure, vectorised functions of heatmaps and masks (NumPy arrays).

Conventions: a heatmap is ``(H, W)`` float; a mask is ``(H, W)`` bool; percentile ``p`` keeps the top ``(100 - p)%``
of pixels, ``heatmap >= percentile(heatmap, p)`` as ProtoPNet's ``find_high_activation_crop`` does. A plateau of the
heatmap's minimum never counts as "top" (so a heatmap that is mostly zero keeps only its non-zero part), and a
constant heatmap, which says nothing about where, gives an empty mask. Boxes are ``(x0, y0, x1, y1)`` with
exclusive ends.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

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


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives of ``pred (..., H, W)`` against ``truth (H, W)``."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = (pred & truth).sum((-2, -1))
    fp = (pred & ~truth).sum((-2, -1))
    fn = (~pred & truth).sum((-2, -1))
    return tp, fp, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
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


def localisation_scores(heatmap: np.ndarray, truth: np.ndarray,
                        percentiles: Sequence[float]) -> dict[str, np.ndarray]:
    """Dice, IoU, PPV and Sensitivity of the heatmap's top-percentile masks, one value per percentile."""
    masks = top_percentile_mask(heatmap, list(percentiles))
    return {name: np.atleast_1d(fn(masks, truth)) for name, fn in MASK_METRICS.items()}


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Area under the ROC curve per column of ``scores (N, C)`` against 0/1 ``labels (N, C)`` (ties count half);
    NaN for a column with only one label value."""
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    labels = np.asarray(labels).reshape(len(labels), -1).astype(bool)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos, neg = scores[labels[:, c], c], scores[~labels[:, c], c]
        if len(pos) and len(neg):
            greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
            out[c] = greater / (len(pos) * len(neg))
    return out
