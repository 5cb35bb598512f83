"""Pictures people look at: heatmap overlays, mask PNGs and panels; written atomically, never clobbering."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from ..explain.mdm import standardised_heatmap
from ..files import atomic_write
from ..geometry import resize_heatmap


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool ``(h, w)`` mask at ``size = (H, W)``: bilinear, then cut at one half (smooth edges, as
    :func:`~protomdm.geometry.resize_heatmap` of the mask would give), in uint8 throughout, so an 8192^2 mask costs 64 MB, not 320."""
    from PIL import Image

    if tuple(mask.shape) == tuple(size):
        return np.asarray(mask, dtype=bool)
    small = Image.fromarray(np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255))
    return np.asarray(small.resize((size[1], size[0]), Image.Resampling.BILINEAR)) >= 128


def save_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """A bool ``(H, W)`` mask as an 8-bit PNG (0 / 255)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255))  # uint8 throughout
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def _grey(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else pixels.mean(-1)


MAX_DISPLAY_SIDE = 2048  # overlays of larger images are drawn from a subsampled copy (memory, not detail)


def save_overlay(path: str | Path, pixels: np.ndarray, heatmap: np.ndarray,
                 box: Sequence[int] | None = None, title: str = "",
                 regions: Sequence[Sequence[int]] = ()) -> Path:
    """Image with the heatmap on top, the box (or each region's box, numbered) outlined and a colour bar.

    Args:
        pixels: ``(H, W)`` or ``(H, W, 3)`` in [0, 1].
        heatmap: ``(h, w)`` in [0, 1] at any resolution (stretched over the image).
        box: ``(x0, y0, x1, y1)`` with exclusive ends, in the same pixels.
        regions: boxes of the separate regions, most important first; drawn instead of ``box`` when given.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    h, w = pixels.shape[:2]
    step = -(-max(h, w) // MAX_DISPLAY_SIDE)  # a figure of ~660 px shows no more: draw a subsampled copy
    if step > 1:
        pixels = pixels[::step, ::step]
        box = tuple(v / step for v in box) if box is not None else None
        regions = [tuple(v / step for v in r) for r in regions]
    heatmap = resize_heatmap(heatmap, pixels.shape[:2])
    # at least 1.5 inches each way: a 3 x 4000 strip still gets a figure (drawn as a thin band), not an empty PNG
    fig = Figure(figsize=(max(1.5, 6.0 * w / max(h, w)) + 1.2, max(1.5, 6.0 * h / max(h, w))), dpi=110)
    ax = fig.add_subplot()
    ax.imshow(pixels if pixels.ndim == 3 else pixels, cmap=None if pixels.ndim == 3 else "gray", vmin=0, vmax=1)
    im = ax.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    boxes = list(regions) or ([box] if box is not None else [])
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5))
        if len(boxes) > 1:  # numbered inside the box's corner, so a box on the image's edge keeps its number
            ax.text(x0 + 0.5, y0 + 0.5, str(i + 1), color="white", fontsize=8, fontweight="bold", va="top",
                    ha="left", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    ax.set_axis_off()
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="relevance")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def paper_overlay(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 1.0, beta: float = 0.25) -> np.ndarray:
    """The MDM paper's figure: ``alpha X + beta M^h`` with ``M^h`` the standardised heatmap
    (:func:`protomdm.explain.mdm.standardised_heatmap`), clipped to [0, 1] for display.

    Args:
        pixels: ``(H, W)`` or ``(H, W, 3)`` in [0, 1]; heatmap: ``(H, W)``. alpha, beta: the paper's weights (it
            does not print them; the defaults are ours: the image as it is, one standard deviation = 0.25).
    Returns:
        ``(H, W)`` or ``(H, W, 3)`` in [0, 1].
    """
    m = standardised_heatmap(heatmap)
    return np.clip(alpha * pixels + beta * (m[..., None] if pixels.ndim == 3 else m), 0, 1)


def save_panels(path: str | Path, rows: list[list[tuple[str, np.ndarray, str | None]]], title: str = "") -> Path:
    """A grid of panels: ``rows[r][c] = (caption, array, cmap)``; heatmaps are drawn over the row's first image.

    A panel with ``cmap`` None is an image (grey or RGB); with a cmap it is a heatmap overlaid on the row's first
    image with that colour map.
    """
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(2.3 * n_cols, 2.3 * n_rows + (0.3 if title else 0)), dpi=100)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(rows):
        base = _grey(row[0][1])
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            caption, arr, cmap = row[c]
            if cmap is None:
                ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)
            else:
                ax.imshow(base, cmap="gray", vmin=0, vmax=1)
                ax.imshow(arr, cmap=cmap, alpha=0.5, vmin=0, vmax=1)
            ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
