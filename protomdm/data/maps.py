"""Heatmaps made elsewhere, read for scoring (``protomdm evaluate --maps DIR``).

A folder (searched recursively) holds one file per image and finding, named ``<image id>_<finding>_map.pkl`` or
``<image id>_<finding>_map.npy``, the image id and finding as ``results.csv`` names them (CheXlocalize's
``patient64541_study1_view1_frontal_Cardiomegaly_map.pkl``). A ``.pkl`` is in the layout of CheXlocalize's
``gradcam_maps_val`` (a dict whose ``map`` is a ``(1, 1, h, w)`` tensor; ``prob``, ``task``, ``gt``, ``cxr_img`` and
``cxr_dims`` beside it); a ``.npy`` holds the ``(h, w)`` map alone. Maps may have any size: the evaluation resizes
them bilinearly to the grid it scores on.

A pickle can run code when it is loaded, so these are read by an unpickler that builds only what such files hold
(dicts, tuples, numbers, strings, tensors through ``torch.load(..., weights_only=True)`` and NumPy arrays) and refuses
anything else in one line.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import UserError
from .images import load_npy
from .loaded import MAX_PIXELS

SUFFIXES = (".pkl", ".npy")
_NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
          ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
          ("numpy", "dtype")}


def _tensor_from_bytes(data: bytes):
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _MapUnpickler(pickle.Unpickler):
    """Builds tensors, arrays and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        import collections

        import torch

        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _tensor_from_bytes
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2  # noqa: SLF001 - what a pickled tensor calls
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in _NUMPY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks to load {module}.{name}"[:120])


def read_map_pickle(path: str | Path) -> dict:
    """The dict of a CheXlocalize-style ``_map.pkl`` (safely unpickled; see the module docstring)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            record = _MapUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError, IndexError) as e:
        why = (str(e) or type(e).__name__).splitlines()[0][:120]
        raise UserError(f"{p.name} is not a heatmap pickle in CheXlocalize's layout ({why})") from None
    if not isinstance(record, dict) or "map" not in record:
        raise UserError(f"{p.name} is not a heatmap pickle in CheXlocalize's layout (a dict with a `map` tensor)")
    return record


def read_map(path: str | Path) -> np.ndarray:
    """The ``(h, w)`` float32 heatmap of a ``_map.pkl`` (its ``map``) or ``_map.npy`` file."""
    p = Path(path)
    if p.suffix == ".npy":
        a = load_npy(p, "heatmap .npy")
    else:
        m = read_map_pickle(p)["map"]
        a = m.detach().cpu().numpy() if hasattr(m, "detach") else np.asarray(m)
    a = np.asarray(a)
    if a.ndim > 2:  # (1, 1, h, w) as CheXlocalize's maps
        a = a.reshape(a.shape[-2:]) if int(np.prod(a.shape[:-2])) == 1 else a
    if a.ndim != 2 or min(a.shape) == 0 or a.size > MAX_PIXELS:
        raise UserError(f"{p.name}: a heatmap must be one 2-D map, got an array of shape {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a) or not np.isfinite(a).all():
        raise UserError(f"{p.name}: the heatmap has values that are not finite real numbers")
    return a.astype(np.float32)


def map_stem(image_id: str, finding: str) -> str:
    """The file name, less ``.pkl``/``.npy``, of an image's map of ``finding`` (``/`` in an id becomes ``_``)."""
    return f"{image_id.replace('/', '_').replace(chr(92), '_')}_{finding}_map"


class MapFolder:
    """The heatmaps of a folder, found by image id and finding."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"`maps`: {self.folder} is not a folder")
        self.files: dict[str, Path] = {}
        for p in sorted(self.folder.rglob("*_map.*")):
            if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file():  # not a half-written temp file
                if p.stem in self.files:
                    raise UserError(f"`maps`: two maps named {p.stem} ({self.files[p.stem].suffix} and {p.suffix}); "
                                    "keep one")
                self.files[p.stem] = p
        if not self.files:
            raise UserError(f"`maps`: {self.folder} holds no <image id>_<finding>_map.pkl or .npy file")

    def path(self, image_id: str, finding: str) -> Path | None:
        """The map file of ``finding`` in ``image_id``, or None."""
        return self.files.get(map_stem(image_id, finding))

    def get(self, image_id: str, finding: str) -> np.ndarray | None:
        """The ``(h, w)`` float32 map of ``finding`` in ``image_id``, or None when the folder has none."""
        p = self.path(image_id, finding)
        return None if p is None else read_map(p)
