"""Ground truth for evaluation: an image with the ground truth of each finding it carries, at the model's input
size. Every dataset source yields :class:`EvalSample` or, for an image listed but unreadable or missing,
:class:`Skipped` with the reason, so an evaluation goes on and reports how many it skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..geometry import Box, resize_heatmap


@dataclass
class Finding:
    """One ground-truth finding of a sample. ``truth``: ``(H, W)`` bool at the model's input size; ``parts``:
    ``(K, 3)`` x, y, visible in the same pixels (CUB), else None; ``boxes``: the finding's separate ground-truth
    boxes in the same pixels (NIH boxes, synthetic objects), for region-level scores; ``original``: the truth at the
    image's own size ``(h, w)`` where a benchmark scores there (CheXlocalize), else None."""

    name: str
    class_index: int
    truth: np.ndarray
    parts: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    original: np.ndarray | None = None


@dataclass
class EvalSample:
    """``pixels``: ``(C, H, W)`` in [0, 1] at the model's input size."""

    id: str
    pixels: torch.Tensor
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Skipped:
    id: str
    reason: str


def resize_mask(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A bool ``(h, w)`` mask at ``size`` (H, W): bilinear (:func:`~protomdm.geometry.resize_heatmap`), then >= 0.5."""
    return resize_heatmap(mask, size) >= 0.5


Shard = tuple[int, int]  # (rank, world size): keep the items whose position % world == rank, before reading them
