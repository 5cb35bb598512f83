"""Bootstrap confidence intervals of means, resampling images rather than rows.

An evaluation has several rows per image (findings, prototypes), and rows of one image are not independent, so the
unit of resampling is the image (a cluster bootstrap): each replicate draws as many images as there are, with
replacement, and averages every row of the drawn images. The interval is the percentile interval of the replicate
means (CheXlocalize reports mIoU and hit rate this way, with 1000 replicates; Saporta et al. 2022).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

REPLICATES = 1000
LEVEL = 0.95


def bootstrap_interval(values: Sequence[float] | np.ndarray, groups: Sequence | None = None, *,
                       replicates: int = REPLICATES, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval ``(low, high)`` of the mean of ``values``.

    Args:
        values: ``(N,)`` numbers; NaN entries (not defined for that row) are left out.
        groups: ``(N,)`` the image of each value (any hashable labels); None: every value its own group.
        replicates: bootstrap resamples; ``seed`` makes them reproducible.

    Returns:
        ``(nan, nan)`` without values; ``(mean, mean)`` with a single group.
    """
    v = np.asarray(values, dtype=np.float64)
    g = np.arange(len(v)) if groups is None else np.asarray(groups, dtype=object)
    keep = ~np.isnan(v)
    v, g = v[keep], g[keep]
    if v.size == 0:
        return float("nan"), float("nan")
    _, codes = np.unique(g.astype(str), return_inverse=True)
    sums, counts = np.bincount(codes, weights=v), np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(sums), size=(replicates, len(sums)))
    means = sums[drawn].sum(1) / counts[drawn].sum(1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_difference_interval(a: Sequence[float], b: Sequence[float], groups: Sequence | None = None, **kw
                               ) -> tuple[float, float, float]:
    """``(mean difference, low, high)`` of ``a - b`` row by row (the same units scored by two methods), with the
    bootstrap interval of :func:`bootstrap_interval` over ``groups``."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = bootstrap_interval(d, groups, **kw)
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan"), low, high
