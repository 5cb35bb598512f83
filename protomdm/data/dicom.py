"""Reading DICOM images as clinical pipelines write them (pydicom).

What reaches the model is the image a radiologist would see by default:

1. stored values -> modality values (Rescale Slope/Intercept or the Modality LUT, via pydicom);
2. modality values -> display values in [0, 1] by the first VOI LUT of the VOI LUT Sequence, else the first Window
   Center/Width pair (with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID), else the image's own min-max;
3. MONOCHROME1 ("white is zero") inverted so that bone is bright, as in MONOCHROME2;
4. RGB and YBR kept as RGB (grey models then take the luma), palette colour expanded to RGB.

Single-frame images only: a multi-frame file is refused with a message saying so (export its frames first), because
a per-frame explanation of a cine or tomosynthesis series is a different question than this tool answers.
Compressed transfer syntaxes decode when a decoder is installed (``pip install 'protomdm[dicom]'``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ImageError
from .loaded import MAX_PIXELS, LoadedImage

DECODER_HINT = "install the DICOM decoders with: pip install 'protomdm[dicom]'"


DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` holds DICOM: its content says so (the ``DICM`` marker after the 128-byte preamble), or, for
    files written without a preamble, its suffix. A file name need not end in ``.dcm`` to be a patient's scan."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        head = b""
    return head[128:132] == b"DICM" or p.suffix.lower() in DICOM_SUFFIXES


BLOCK_VALUES = 1 << 22  # values per block of rows that the LUTs see at once: 32 MB of float64, whatever the image


def display_values(ds, stored: np.ndarray) -> np.ndarray:
    """Stored grey values ``(H, W)`` -> display values ``(H, W)`` float32 in [0, 1], MONOCHROME1 inverted (steps 1-3).

    pydicom's ``apply_modality_lut`` and ``apply_voi_lut`` do the work. Their output lies in the LUT's range
    (``0 .. 2**bits - 1`` of its descriptor) or, for a window, in the modality values' range, which we read off by
    windowing -inf and +inf (the window's two ends), so that the result does not depend on how pydicom sizes it.
    They compute in float64, so the image goes through them in blocks of rows (:data:`BLOCK_VALUES`): an 8192^2
    scan costs its float32 result and a few blocks, not several float64 copies.

    Raises:
        ValueError: rescale, window or pixel values that are not finite numbers, or a VOI LUT that contradicts
            its descriptor.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    seq = ds.get("VOILUTSequence")
    window = None
    if not seq and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            with np.errstate(over="ignore"):
                window = apply_voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=False)
            apply_voi_lut(np.zeros(1), ds, prefer_lut=False)
        except (ValueError, TypeError, IndexError) as e:  # a window the standard does not allow
            warnings.warn(f"{str(e).splitlines()[0][:120]}; using the image's min-max instead", stacklevel=2)
            window = None
    out = np.empty(stored.shape, np.float32)
    rows = max(1, BLOCK_VALUES // max(1, stored.shape[1]))
    for r in range(0, stored.shape[0], rows):
        x = np.asarray(apply_modality_lut(stored[r:r + rows], ds), dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("its modality values are not all finite numbers (check Rescale Slope/Intercept and "
                             "the pixel data)")
        if seq:
            bits = int(seq[0].LUTDescriptor[2])
            # a LUT's inputs are integers: rescaled values are rounded to them (pydicom warns on float input)
            y = np.asarray(apply_voi_lut(np.rint(x).astype(np.int64), ds, prefer_lut=True), dtype=np.float64)
            y /= float(2**bits - 1)
        elif window is not None:
            lo, hi = window
            with np.errstate(over="ignore"):
                y = (np.asarray(apply_voi_lut(x, ds, prefer_lut=False), dtype=np.float64) - lo) / (hi - lo)
        else:
            y = x  # scaled below, by the whole image's min and max
        if not np.isfinite(y).all():
            raise ValueError("windowing gave values that are not finite numbers (check Window Center/Width)")
        out[r:r + rows] = y
    if not seq and window is None:
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            out -= lo
            out /= hi - lo
        else:
            out[:] = 0
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        np.subtract(1.0, out, out=out)
    return out


def _check_pixel_data_length(ds, p: Path, values: int) -> None:
    """Refuse pixel data far larger than the header's Rows x Columns x Samples x Frames, before it is decoded.

    Native pixel data may be somewhat longer than the values need (padding, stray bytes); compressed pixel data
    (whose length only the file's size bounds) may not be more than twice the uncompressed size, which no codec
    needs. So a crafted header cannot make protomdm read gigabytes for a 64 x 64 image.
    """
    bits = int(ds.get("BitsAllocated", 16) or 16)
    expected = -(-values * bits // 8)
    elem = ds.get_item("PixelData", keep_deferred=True)  # its length, without reading a deferred value
    length = getattr(elem, "length", None)
    if length is None and isinstance(getattr(elem, "value", None), bytes):
        length = len(elem.value)
    if length is None or length == 0xFFFFFFFF:  # encapsulated (compressed) frames: the file's size bounds them
        length, limit, what = p.stat().st_size, 2 * expected + (1 << 20), "compressed pixel data in a file of"
    else:  # a writer's padding or a few stray bytes are decoded as pydicom does (it warns and drops them)
        limit, what = expected + expected // 4 + (1 << 16), "pixel data of"
    if length > limit:
        raise ImageError(f"{p}: its {what} {length} bytes is far more than its header's {ds.Columns}x{ds.Rows} "
                         f"image needs ({expected} bytes); refused before decoding (a corrupt or crafted file)")


def _decode(ds, p: Path) -> np.ndarray:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises RuntimeError/NotImplementedError/... by handler
        msg = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        if ts is not None and ts.is_compressed and any(w in str(e).lower() for w in
                                                       ("plugin", "handler", "decoder", "no pixel data decoders",
                                                        "missing required dependencies", "unable to decode")):
            raise ImageError(f"{p}: cannot decode its {ts.name} pixel data; {DECODER_HINT}") from None
        raise ImageError(f"{p}: the pixel data cannot be decoded, the file may be truncated ({msg})") from None


def read_dicom(path: str | Path, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read a single-frame DICOM image as display values in [0, 1]: ``(H, W)`` grey or ``(H, W, 3)`` RGB.

    ``metadata`` holds the SOP Instance, Series and Study Instance UIDs, SOP class, modality and photometric
    interpretation (never patient attributes); ``pixel_spacing`` is Pixel Spacing, else Imager Pixel Spacing.

    Raises:
        ImageError: not DICOM, truncated, no pixel data, empty, multi-frame, over ``max_pixels``, or compressed with
            no decoder installed; one line naming the file and the reason.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p, defer_size="16 MB")  # large values are read when used, after the checks
    except InvalidDicomError:
        raise ImageError(f"{p}: not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise ImageError(f"image not found: {p}") from None
    except Exception as e:  # noqa: BLE001 - a truncated header: EOFError, OSError, struct.error, ValueError...
        raise ImageError(f"{p}: the DICOM file is truncated or corrupt ({type(e).__name__})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageError(f"{p}: the DICOM object has no pixel data (SOP class "
                         f"{getattr(ds.get('SOPClassUID'), 'name', 'unknown')}): not an image, or the file is truncated")
    try:  # the sizes from the header, checked before any pixel is decoded
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples, frames = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ImageError(f"{p}: Rows, Columns, Samples per Pixel or Number of Frames is not a number") from None
    if rows == 0 or cols == 0:
        raise ImageError(f"{p}: the image is empty ({rows}x{cols} pixels)")
    if rows * cols > max_pixels or rows * cols * samples * frames > 3 * max_pixels:
        raise ImageError(f"{p}: the image is too large ({cols}x{rows} pixels x {samples} samples x {frames} frames, "
                         f"limit {max_pixels} pixels); downsample it first")
    if frames > 1:
        raise ImageError(f"{p}: multi-frame DICOM ({frames} frames) is not supported; export single frames")
    _check_pixel_data_length(ds, p, rows * cols * samples * frames)
    arr = _decode(ds, p)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pi.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise ImageError(f"{p}: expected one grey frame, got pixel data of shape {arr.shape}")
        try:
            pixels = display_values(ds, arr)
        except Exception as e:  # noqa: BLE001 - pydicom's LUT code raises many kinds for malformed attributes
            raise ImageError(f"{p}: cannot compute its display values: {str(e).splitlines()[0][:160] or type(e).__name__}"
                             ) from None
    elif pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float64)
        pixels = rgb / (65535.0 if rgb.max() > 255 else 255.0)
    elif pi in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        # pydicom already converts YBR to RGB when decoding (its default), so arr is RGB here.
        pixels = arr.astype(np.float64) / float(2 ** int(ds.get("BitsStored", 8)) - 1)
    else:
        raise ImageError(f"{p}: unsupported Photometric Interpretation {pi}")
    spacing = pixel_spacing(ds)
    meta = {"format": "dicom", "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
            "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
            "sop_class": getattr(ds.get("SOPClassUID"), "name", ""), "modality": str(ds.get("Modality", "")),
            "photometric_interpretation": pi, "bits_stored": int(ds.get("BitsStored", 0) or 0),
            "transfer_syntax": getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "")}
    del arr, ds  # the stored values are not needed any more
    pixels = np.asarray(pixels, dtype=np.float32)
    np.clip(pixels, 0, 1, out=pixels)
    return LoadedImage(pixels, p, spacing, meta)


def valid_spacing(value) -> tuple[float, float] | None:
    """(row, column) spacing in mm from a Pixel Spacing value, or None when it is absent or not two positive
    numbers (one value, text, NaN, ``0\\0``: a malformed header does not stop the image being read)."""
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, col) if all(np.isfinite(v) and v > 0 for v in (row, col)) else None


def pixel_spacing(ds) -> tuple[float, float] | None:
    """The first valid of Pixel Spacing and Imager Pixel Spacing (a ``0\\0`` Pixel Spacing does not hide a valid
    Imager Pixel Spacing), or None."""
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = valid_spacing(ds.get(kw))
        if spacing:
            return spacing
    return None
