"""Reading images (PNG, JPEG, NPY; DICOM in :mod:`protomdm.data.dicom`) and turning them into model inputs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import ImageError
from .dicom import is_dicom_file, read_dicom
from .loaded import MAX_PIXELS, LoadedImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".npy", ".bmp", ".tif", ".tiff"}


def _to_unit(a: np.ndarray, name: str) -> np.ndarray:
    """Scale an array to float32 [0, 1]: uint8 by 255, uint16 by 65535, others by their own min-max."""
    if a.size == 0 or min(a.shape[:2]) == 0:
        raise ImageError(f"{name}: the image is empty (size {a.shape})")
    if a.dtype in (np.uint8, np.uint16):  # scaled in place: one float32 copy, not two
        out = a.astype(np.float32)
        out /= 255.0 if a.dtype == np.uint8 else 65535.0
        return out
    if a.dtype == bool:
        return a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.number):
        raise ImageError(f"{name}: unsupported pixel type {a.dtype}")
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise ImageError(f"{name}: the image contains NaN or infinite values")
    if a.dtype.kind == "c":
        raise ImageError(f"{name}: unsupported pixel type {a.dtype} (complex values)")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a.astype(np.float32, copy=False)
    out = np.empty(a.shape, np.float32)  # (a - lo) / (hi - lo), computed in a's precision, stored as float32
    np.subtract(a, lo, out=out, casting="unsafe")
    if hi > lo:
        out /= np.float32(hi - lo)
    return out


def _channels_last(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ImageError(f"{name}: expected a 2-D grey or 3-channel image, got an array of shape {a.shape}")
    return a


def read_image(path: str | Path) -> LoadedImage:
    """Read a PNG, JPEG, BMP, TIFF or NPY file (and DICOM, see :func:`protomdm.data.dicom.read_dicom`).

    Raises:
        ImageError: missing, unreadable, empty or over-large files, with the reason in one line.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image not found: {p}")
    if not p.is_file():
        raise ImageError(f"not a file: {p}")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: the file is empty")
    if is_dicom_file(p):
        return read_dicom(p)
    if p.suffix.lower() == ".npy":
        a = load_npy(p)
        return LoadedImage(_to_unit(_channels_last(a, str(p)), str(p)), p)
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{p}: the image is too large ({w}x{h} pixels); downsample it first")
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    a = np.asarray(im)
                    a = a.astype(np.uint16) if im.mode.startswith("I;16") else a
                elif im.mode in ("L", "1"):  # no conversion copy where the mode is already the one wanted
                    a = np.asarray(im if im.mode == "L" else im.convert("L"))
                else:
                    a = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"{p}: not a readable image ({str(e).splitlines()[0][:120]})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{p}: the image is truncated or corrupt ({str(e).splitlines()[0][:120]})") from None
    return LoadedImage(_to_unit(_channels_last(a, str(p)), str(p)), p)


def image_shape(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels; :class:`ImageError` if
    it cannot be read."""
    p = Path(path)
    try:
        if is_dicom_file(p):
            import pydicom

            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            return int(ds.Rows), int(ds.Columns)
        if p.suffix.lower() == ".npy":
            a = _channels_last(np.broadcast_to(np.uint8(0), npy_header(p)[0]), str(p))  # a view: nothing allocated
            return int(a.shape[0]), int(a.shape[1])
        from PIL import Image

        with Image.open(p) as im:
            return int(im.size[1]), int(im.size[0])
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader's failure on a bad file is that file's ImageError
        why = (str(e) or type(e).__name__).splitlines()[0][:120]
        raise ImageError(f"{p}: not a readable image ({why})") from None


def load_npy(p: Path, what: str = ".npy array") -> np.ndarray:
    """The array of an NPY file, its header checked before anything is allocated (:func:`check_npy_header`);
    :class:`ImageError` naming the file as not a readable ``what`` otherwise."""
    try:
        check_npy_header(p)
        return np.load(p, allow_pickle=False)
    except ImageError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise ImageError(f"{p}: not a readable {what} ({str(e).splitlines()[0][:120]})") from None


def npy_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` an NPY file's header declares, read without its data."""
    with open(p, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def check_npy_header(p: Path) -> None:
    """Refuse an NPY file whose header declares more than :data:`MAX_PIXELS` x 3 values, before allocating them."""
    shape, dtype = npy_header(p)
    if dtype.hasobject:
        raise ImageError(f"{p}: the array holds Python objects, not pixels")
    if int(np.prod(shape, dtype=np.float64)) > MAX_PIXELS * 3:
        raise ImageError(f"{p}: the array is too large ({shape}); downsample it first")


@dataclass(frozen=True)
class InputSpec:
    """What a plain classifier expects (the input fields of :class:`~protomdm.config.ModelConfig`)."""

    img_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet, as torchvision's weights
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


def model_input(pixels: torch.Tensor, config: ModelConfig | InputSpec) -> torch.Tensor:
    """Pixels in [0, 1] ``(B, C', H', W')`` -> the model's input ``(B, C, H, W)``: resized (bilinear, antialiased)
    to ``config.img_size``, grey <-> RGB matched to ``config.in_channels`` (luma weights), normalised."""
    t = pixels
    if tuple(t.shape[-2:]) != tuple(config.img_size):
        t = F.interpolate(t, size=tuple(config.img_size), mode="bilinear", align_corners=False, antialias=True)
    if config.in_channels == 3 and t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif config.in_channels == 1 and t.shape[1] == 3:
        t = (t * torch.tensor([0.299, 0.587, 0.114], device=t.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    mean = torch.tensor(config.mean, device=t.device).view(1, -1, 1, 1)
    std = torch.tensor(config.std, device=t.device).view(1, -1, 1, 1)
    return (t.clamp(0, 1) - mean) / std


def pixels_to_tensor(pixels: np.ndarray, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` pixels in [0, 1] -> a ``(C, H, W)`` float32 tensor, resized to ``size`` (bilinear,
    antialiased) if given."""
    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]
    return t.clamp(0, 1).contiguous()  # (C, H, W) strides, whatever the layout of the pixels


def to_model_input(image: LoadedImage | np.ndarray, config: ModelConfig | InputSpec) -> torch.Tensor:
    """One image (``(H, W)`` or ``(H, W, 3)`` in [0, 1]) as the model's input ``(1, C, H, W)``; see
    :func:`model_input`."""
    pixels = image.pixels if isinstance(image, LoadedImage) else image
    return model_input(pixels_to_tensor(pixels, tuple(config.img_size))[None], config)  # resized first: small copies


def box_to_original(box: tuple[int, int, int, int], input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Map a box (x0, y0, x1, y1; exclusive ends) from model-input pixels to the original image's pixels.

    Rounds outwards, so the original box covers every original pixel the input box touches.
    """
    sy, sx = original_size[0] / input_size[0], original_size[1] / input_size[1]
    x0, y0, x1, y1 = box
    return (int(np.floor(x0 * sx)), int(np.floor(y0 * sy)),
            min(original_size[1], int(np.ceil(x1 * sx))), min(original_size[0], int(np.ceil(y1 * sy))))
