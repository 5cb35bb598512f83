"""Faithfulness: does the explained activation really depend on the pixels a heatmap marks?

Both measures run the model, so they take a ``score_fn`` mapping model inputs ``(N, C, H, W)`` to the explained
activation ``(N,)`` (e.g. a selector). They work in the model's input space, where "remove a pixel" means "replace it
by the baseline": ``zero`` (the normalisation mean, i.e. a neutral grey), ``blur`` or ``mean``, the same choices MDM
masks with. The pure summaries (:func:`~protomdm.evaluation.metrics.average_drop`,
:func:`~protomdm.evaluation.metrics.curve_auc`) live in :mod:`protomdm.evaluation.metrics`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..explain.perturbation import Perturbation

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def heatmap_masked_scores(score_fn: ScoreFn, x: torch.Tensor, heatmaps: np.ndarray | torch.Tensor,
                          baseline: str = "zero") -> np.ndarray:
    """Scores on the inputs blended with the baseline by the heatmap, ``h x + (1 - h) b`` (Average Drop's ``O``).

    Args:
        x: ``(C, H, W)`` one input, or ``(N, C, H, W)`` matching the heatmaps.
        heatmaps: ``(N, H, W)`` in [0, 1].

    Returns:
        ``(N,)`` scores.
    """
    h = torch.as_tensor(np.asarray(heatmaps, np.float32), device=x.device)
    x = x.expand(len(h), -1, -1, -1) if x.dim() == 3 else x
    return score_fn(Perturbation.apply(x, h, Perturbation(baseline).baseline(x))).float().cpu().numpy().reshape(len(h))


@torch.no_grad()
def deletion_insertion(score_fn: ScoreFn, x: torch.Tensor, heatmap: np.ndarray, steps: int = 32,
                       baseline: str = "zero", batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (Petsiuk et al. 2018) of one heatmap.

    Pixels are ranked by the heatmap (highest first; ties in raster order). Deletion replaces the top ``s/steps``
    of them by the baseline, insertion starts from the baseline and restores them, for ``s = 0..steps``.

    Args:
        x: ``(C, H, W)`` the model input.
        heatmap: ``(H, W)``.

    Returns:
        ``(deletion (steps + 1,), insertion (steps + 1,))`` raw scores; divide by the unmasked score to compare
        images, and summarise with :func:`~protomdm.evaluation.metrics.curve_auc`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    c, hh, ww = x.shape
    n = hh * ww
    order = torch.as_tensor(np.argsort(-np.asarray(heatmap, np.float64).ravel(), kind="stable").copy(),
                            device=x.device)
    counts = np.rint(np.linspace(0, n, steps + 1)).astype(int)
    rank = torch.empty(n, dtype=torch.long, device=x.device)
    rank[order] = torch.arange(n, device=x.device)
    b = Perturbation(baseline).baseline(x[None])
    curves = []
    for deleting in (True, False):
        scores = []
        for start in range(0, len(counts), batch_size):
            k = torch.as_tensor(counts[start:start + batch_size], device=x.device)
            top = (rank[None] < k[:, None]).view(-1, 1, hh, ww)  # (S', 1, H, W): the first k ranked pixels
            keep_x = ~top if deleting else top
            scores.append(score_fn(Perturbation.apply(x[None], keep_x, b)).float().cpu().reshape(-1))
        curves.append(torch.cat(scores).numpy())
    return curves[0], curves[1]
