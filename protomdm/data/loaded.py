"""The image type every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_PIXELS = 5120 * 5120  # larger inputs are refused before decoding (chest X-rays and mammograms: at most ~4k x 5.6k); the README's limits table gives the peak memory this bounds


@dataclass
class LoadedImage:
    """An image as read from disk.

    Attributes:
        pixels: ``(H, W)`` grey or ``(H, W, 3)`` RGB, float32 in [0, 1].
        source: the file it came from.
        pixel_spacing: (row, column) spacing in mm when the file says so (DICOM), else None.
        metadata: format-specific extras (never patient identifiers).
    """

    pixels: np.ndarray
    source: Path
    pixel_spacing: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])
