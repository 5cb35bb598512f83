"""The SIIM-ACR Pneumothorax competition's run-length encoding (its ``train-rle.csv``: ``ImageId, EncodedPixels``).

Pixels are numbered down the columns (``x * height + y``); the text is pairs ``start length`` in which each start
counts from the end of the previous run (the first from pixel 0); ``-1`` is an image without pneumothorax. An image
with several regions has one row per region.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def decode_siim_rle(text: str, size: tuple[int, int]) -> np.ndarray:
    """The bool mask ``(H, W)`` of one SIIM RLE text for an image of ``size`` (H, W); all False for ``-1``."""
    h, w = size
    mask = np.zeros(h * w, bool)  # column-major: index x * h + y
    values = text.split()
    if values in ([], ["-1"]):
        return mask.reshape(w, h).T
    try:
        numbers = np.array([int(v) for v in values], np.int64)
    except ValueError:
        raise UserError("not a SIIM run-length encoding (pairs of whole numbers, or -1)") from None
    if len(numbers) % 2 or (numbers < 0).any() or (numbers[1::2] == 0).any():
        raise UserError("not a SIIM run-length encoding (an odd count of numbers, a negative one or a zero length)")
    ends = np.cumsum(numbers)  # start_1, end_1, start_2, end_2 ... as absolute offsets
    if ends[-1] > h * w:
        raise UserError(f"its runs end at pixel {int(ends[-1])}, beyond the {w}x{h} image ({h * w} pixels): the "
                        "encoding is of an image of another size")
    for start, end in zip(ends[0::2], ends[1::2]):
        mask[start:end] = True
    return mask.reshape(w, h).T


def encode_siim_rle(mask: np.ndarray) -> str:
    """The SIIM RLE text of a bool mask ``(H, W)`` (``-1`` when empty): the inverse of :func:`decode_siim_rle`."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(np.int8), [0]])))
    if not len(edges):
        return "-1"
    starts, ends = edges[0::2], edges[1::2]
    relative = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{s} {e - a}" for s, a, e in zip(relative, starts, ends))
