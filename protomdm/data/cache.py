"""Decode each image once: a memory-mapped ``(N, C, H, W)`` uint8 array per (image list, input size, channels),
so that training epochs read bytes instead of decoding 1024x1024 PNGs or DICOMs every time.

Each row remembers its file's size and modification time; a file that changed since is read again, a file that
cannot be read is reported (and left out by the caller). Disk cost: ``N * C * H * W`` bytes (NIH's 112,120 grey
images at 224 px: 5.6 GB; at 512 px: 29 GB).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..files import atomic_write
from .images import pixels_to_tensor, read_image

VERSION = 1  # bump when what a row holds changes (the display pipeline, the resize)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/protomdm``, else ``~/.cache/protomdm``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "protomdm"


def to_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    """``(C, H, W)`` as ``channels`` channels: grey repeated to RGB, RGB averaged to grey."""
    if t.shape[0] == channels:
        return t
    return t.mean(0, keepdim=True) if channels == 1 else t[:1].expand(channels, -1, -1)


def load_pixels(path: Path, size: tuple[int, ...], channels: int) -> torch.Tensor:
    """One image file as the model sees it before normalisation: ``(C, H, W)`` float in [0, 1] at ``size``."""
    return to_channels(pixels_to_tensor(read_image(path).pixels, size), channels)


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


class ImageCache:
    """Rows of decoded images, one per path, in a cache folder; see the module docstring.

    Args:
        folder: where the cache lives (created if needed).
        paths: the images, in the dataset's order.
        size: ``(H, W)`` of each row; ``channels``: 1 or 3.
    """

    def __init__(self, folder: str | Path, paths: Sequence[Path], size: tuple[int, int], channels: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.size, self.channels = tuple(size), channels
        key = hashlib.sha256(json.dumps([VERSION, [str(p.resolve()) for p in self.paths], self.size, channels])
                             .encode()).hexdigest()[:20]
        self.folder = Path(folder)
        self.array_path = self.folder / f"images-{key}.npy"
        self.index_path = self.folder / f"images-{key}.json"
        self._array: np.ndarray | None = None

    def prepare(self, progress: bool = False, read: Callable[[Path], torch.Tensor] | None = None
                ) -> dict[int, str]:
        """Read every image that is not cached yet or changed since; returns ``{row: reason}`` for the images that
        cannot be read (missing or unreadable)."""
        read = read or (lambda p: load_pixels(p, self.size, self.channels))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the image cache folder {self.folder}: {e.strerror}") from None
        shape = (len(self.paths), self.channels, *self.size)
        index = self._read_index()
        if index is None or not self.array_path.exists():
            index = {"stat": [None] * len(self.paths), "error": [None] * len(self.paths)}
            arr = np.lib.format.open_memmap(self.array_path, mode="w+", dtype=np.uint8, shape=shape)
        else:
            arr = np.load(self.array_path, mmap_mode="r+")
        todo = [i for i, p in enumerate(self.paths) if index["stat"][i] is None or index["stat"][i] != _stat(p)]
        for i in tqdm(todo, desc="caching images", unit="image", disable=not progress or not todo):
            p = self.paths[i]
            stat = _stat(p)
            if stat is None:
                index["stat"][i], index["error"][i] = None, f"{p}: no such file"
                continue
            try:
                arr[i] = (read(p).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                index["error"][i] = None
            except UserError as e:
                index["error"][i] = str(e)
            index["stat"][i] = stat
        arr.flush()
        del arr
        atomic_write(self.index_path, lambda tmp: Path(tmp).write_text(json.dumps(index)))
        return {i: e for i, e in enumerate(index["error"]) if e is not None}

    def _read_index(self) -> dict | None:
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(index, dict) and all(len(index.get(k, ())) == len(self.paths) for k in ("stat", "error"))
        return index if ok else None

    def __getitem__(self, i: int) -> torch.Tensor:
        """Row ``i`` as ``(C, H, W)`` float in [0, 1] (the array is opened lazily, once per DataLoader worker)."""
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[i], dtype=np.float32)) / 255

    def __getstate__(self) -> dict:  # DataLoader workers open their own map
        return {**self.__dict__, "_array": None}
