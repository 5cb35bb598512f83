"""A synthetic "planted lesion" dataset with exact ground truth, generated on the fly from a seed.

Each image is a textured, noisy background with small planted objects. In the single-label variant the image's
class is the one labelled object it carries; in the multi-label variant each finding is present or absent
independently. Unlabelled distractor objects (faint rings, dark blobs) appear in every image, so a model must look
at the right object, not at "any object". Every sample comes with the pixel mask and box of each labelled object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig, require
from ..errors import ConfigError, UserError
from ..geometry import Box, mask_box
from .groundtruth import EvalSample, Finding, Shard, resize_mask
from .images import pixels_to_tensor
from .sources import DatasetSource, EvalOptions, register_dataset

SHAPES = ("disk", "square", "cross", "stripes", "triangle", "blob")
DISTRACTORS = ("ring", "dark_blob")


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``(size, size)`` footprint (bool) and intensity pattern (float) of one object."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    r = np.hypot(yy - c, xx - c)
    pattern = np.ones((size, size))
    if kind == "disk":
        m = r <= c * 0.95
    elif kind == "square":
        m = (np.abs(yy - c) <= c * 0.8) & (np.abs(xx - c) <= c * 0.8)
    elif kind == "cross":
        m = ((np.abs(yy - c) <= c * 0.28) | (np.abs(xx - c) <= c * 0.28)) & (r <= c * 1.1)
    elif kind == "stripes":
        m = r <= c * 0.95
        pattern = 0.5 + 0.5 * np.sign(np.sin((xx + yy) * np.pi / max(2.0, size / 4)))
    elif kind == "triangle":
        m = (yy >= size * 0.1) & (np.abs(xx - c) <= (yy - size * 0.1) * 0.6)
    elif kind == "blob":
        m = r <= c * 0.95
        pattern = np.exp(-(r**2) / (2 * (c * 0.5) ** 2))
        m &= pattern > 0.25
    elif kind == "ring":
        m = (r <= c * 0.95) & (r >= c * 0.6)
    elif kind == "dark_blob":
        m = r <= c * 0.9
    else:  # pragma: no cover - guarded by the dataset
        raise ValueError(kind)
    return m, pattern


def _background(size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth low-frequency texture plus pixel noise: ``(channels, size, size)`` in about [0.2, 0.6]."""
    coarse = rng.normal(0, 1, (channels, 8, 8))
    t = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(size, size), mode="bicubic",
                                        align_corners=False)[0].numpy()
    t = 0.4 + 0.08 * t / (np.abs(t).max() + 1e-8)
    return t + rng.normal(0, 0.04, (channels, size, size))


@dataclass
class SyntheticSample:
    image: np.ndarray  # (C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (F,) 0/1 per class / finding
    masks: np.ndarray  # (F, H, W) bool: each labelled object's pixels (empty where absent)

    def boxes(self) -> list[Box | None]:
        """Per class / finding: the box (x0, y0, x1, y1; exclusive ends) of its object, None where absent."""
        return [mask_box(m) for m in self.masks]


class SyntheticLesions(Dataset):
    """Planted-lesion images, deterministic per (seed, index).

    Args:
        classes: object kinds that carry a label, from :data:`SHAPES`.
        n: number of images.
        size: image side in pixels.
        channels: 1 (grey, X-ray-like) or 3 (each object gets a class-specific colour tint).
        multilabel: each finding present with probability ``p_present`` (else exactly one class per image).
        seed: different seeds give disjoint-looking sets (use one for train, another for test).
        distractors: most unlabelled distractor objects per image.
        object_size: (min, max) object side in pixels.

    ``dataset[i]`` returns ``(image (C, H, W) float32, target, mask)`` with ``target`` the class index (single-label)
    or a float multi-hot ``(F,)`` vector, and ``mask`` the ``(F, H, W)`` ground-truth masks as uint8.
    """

    def __init__(self, classes: tuple[str, ...] | list[str] = ("disk", "square", "cross"), n: int = 600,
                 size: int = 64, channels: int = 3, multilabel: bool = False, seed: int = 0,
                 distractors: int = 2, object_size: tuple[int, int] | None = None, p_present: float = 0.5) -> None:
        unknown = [c for c in classes if c not in SHAPES]
        if unknown:
            raise ConfigError(f"classes {', '.join(unknown)} are not in the synthetic data (it has: {', '.join(SHAPES)})")
        if len(set(classes)) != len(classes) or not classes:
            raise ConfigError("synthetic classes must be a non-empty list without repeats")
        if channels not in (1, 3) or size < 24 or n < 1:
            raise ConfigError("synthetic data needs channels 1 or 3, size >= 24 and n >= 1")
        self.object_size = object_size or (max(8, size // 6), max(12, size // 4))
        if not 4 <= self.object_size[0] <= self.object_size[1] <= size // 2:
            raise ConfigError(f"synthetic object sizes must be 4 <= min <= max <= half the image side ({size // 2}), "
                              f"got {tuple(self.object_size)}")
        self.classes, self.n, self.size, self.channels = tuple(classes), n, size, channels
        self.multilabel, self.seed, self.distractors, self.p_present = multilabel, seed, distractors, p_present

    def __len__(self) -> int:
        return self.n

    def _place(self, img, occupied, kind, rng, tint):
        lo, hi = self.object_size
        for _ in range(50):
            s = int(rng.integers(lo, hi + 1))
            y, x = (int(v) for v in rng.integers(0, self.size - s + 1, 2))
            if not occupied[y:y + s, x:x + s].any():
                break
        foot, pattern = _shape_mask(kind, s, rng)
        full = np.zeros((self.size, self.size), bool)
        full[y:y + s, x:x + s] = foot
        occupied[max(0, y - 2):y + s + 2, max(0, x - 2):x + s + 2] = True
        val = np.zeros((self.size, self.size))
        val[y:y + s, x:x + s] = pattern
        for ch in range(self.channels):
            img[ch][full] = np.clip(tint[ch] * (0.35 + 0.45 * val[full]) + img[ch][full] * 0.3, 0, 1)
        return full

    def sample(self, index: int) -> SyntheticSample:
        """The full sample (image, labels, per-finding masks) at ``index``."""
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        img = _background(self.size, self.channels, rng)
        occupied = np.zeros((self.size, self.size), bool)
        f = len(self.classes)
        labels = np.zeros(f, np.float32)
        if self.multilabel:
            labels[:] = rng.random(f) < self.p_present
        else:
            labels[int(rng.integers(f))] = 1
        masks = np.zeros((f, self.size, self.size), bool)
        for _ in range(int(rng.integers(0, self.distractors + 1))):
            kind = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
            tint = np.full(3, 0.05 if kind == "dark_blob" else 0.75)
            self._place(img, occupied, kind, rng, tint)
        for k in np.flatnonzero(labels):
            shade = 0.85 + 0.15 * rng.random()
            tint = shade * (np.array([1.0, 0.55 + 0.4 * (k % 2), 0.45 + 0.25 * (k % 3)]) if self.channels == 3
                            else np.ones(3))
            masks[k] = self._place(img, occupied, self.classes[k], rng, tint)
        return SyntheticSample(np.clip(img, 0, 1).astype(np.float32), labels, masks)

    def source(self, index: int) -> str:
        """Where item ``index`` comes from, for a prototype's provenance."""
        return f"synthetic seed {self.seed} #{index}"

    def __getitem__(self, index: int):
        s = self.sample(index)
        target = torch.from_numpy(s.labels) if self.multilabel else int(s.labels.argmax())
        return torch.from_numpy(s.image), target, torch.from_numpy(s.masks.astype(np.uint8))


def synthetic_samples(config: ModelConfig, n: int, seed: int, multilabel: bool, shard: Shard = (0, 1),
                      object_size: tuple[int, int] | None = None) -> Iterator[EvalSample]:
    """Planted-lesion images of the model's classes (its class names must be synthetic shapes); ``object_size``:
    as :class:`SyntheticLesions`'s."""
    if not set(config.class_names) <= set(SHAPES):
        raise UserError(f"the synthetic dataset needs a model trained on synthetic shapes ({', '.join(SHAPES)}); "
                        f"this one's classes are {', '.join(config.class_names)}")
    data = SyntheticLesions(config.class_names, n=n, size=config.img_size[0], channels=config.in_channels,
                            multilabel=multilabel, seed=seed, object_size=object_size)
    for i in range(shard[0], n, shard[1]):
        s = data.sample(i)
        yield EvalSample(f"synthetic-{seed}-{i:05d}", pixels_to_tensor(s.image.transpose(1, 2, 0), config.img_size),
                         [Finding(config.class_names[k], int(k), m, boxes=[b for b in [mask_box(m)] if b is not None])
                          for k in np.flatnonzero(s.labels) for m in [resize_mask(s.masks[k], config.img_size)]])


@dataclass
class SyntheticOptions:
    """The ``synthetic`` dataset's options: images in the train and test sets, single- or multi-label, the most
    unlabelled distractor objects per image and the objects' (min, max) side in pixels (default: in proportion to
    the image, a sixth to a quarter of its side; fixed sizes keep small findings small on large images). It needs
    no ``root``."""

    num_train: int = 600
    num_test: int = 300
    multilabel: bool = False
    distractors: int = 2
    object_size: tuple[int, int] | None = None
    needs_root: ClassVar[bool] = False

    def __post_init__(self) -> None:
        require(self.num_train >= 1 and self.num_test >= 1, "data.num_train and data.num_test must be >= 1")
        require(self.distractors >= 0, f"data.distractors must be >= 0, got {self.distractors}")
        require(self.object_size is None or (len(self.object_size) == 2 and 4 <= self.object_size[0]
                                             <= self.object_size[1]),
                f"data.object_size must be [min, max] with 4 <= min <= max, got {self.object_size}")


@register_dataset("synthetic", options=SyntheticOptions)
class SyntheticSource(DatasetSource):
    """Planted-lesion images generated from ``data.seed`` (the test set from ``seed + 1``); no files."""

    def training(self, model: ModelConfig) -> tuple[Dataset, Dataset, bool]:
        d = self.data
        common = dict(classes=model.class_names, size=model.img_size[0], channels=model.in_channels,
                      multilabel=d.multilabel, distractors=d.distractors, object_size=d.object_size)
        return (SyntheticLesions(n=d.num_train, seed=d.seed, **common),
                SyntheticLesions(n=d.num_test, seed=d.seed + 1, **common), d.multilabel)

    def evaluation(self, model: ModelConfig, options: EvalOptions, shard: Shard = (0, 1)) -> Iterator[EvalSample]:
        return synthetic_samples(model, options.limit or 50, options.seed, options.multilabel, shard,
                                 self.data.object_size)


def write_table(folder: str | Path, n: int, classes: tuple[str, ...] = ("disk", "square", "cross"), size: int = 64,
                channels: int = 3, multilabel: bool = True, seed: int = 0, scale: int = 1,
                test_fraction: float = 0.25) -> Path:
    """Write a synthetic collection the way a user's own data comes: ``images/*.png`` (``scale`` times larger
    than ``size``), ``labels.csv`` (path, ``|``-separated labels, split, patient) and ``boxes.csv`` (image, label,
    x0, y0, x1, y1 in the PNGs' pixels). Returns the folder."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = SyntheticLesions(classes, n=n, size=size, channels=channels, multilabel=multilabel, seed=seed)
    rows, boxes = [], []
    for i in range(n):
        s = data.sample(i)
        px = (s.image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        img = Image.fromarray(px[..., 0] if channels == 1 else px)
        if scale != 1:
            img = img.resize((size * scale, size * scale), Image.Resampling.BILINEAR)
        name = f"images/img{i:05d}.png"
        img.save(folder / name)
        present = [classes[k] for k in np.flatnonzero(s.labels)]
        split = "test" if i // 2 >= round(n / 2 * (1 - test_fraction)) else "train"  # two images per patient
        rows.append(f"{name},{'|'.join(present)},{split},p{i // 2:05d}")
        for k, box in enumerate(s.boxes()):
            if box is not None:
                boxes.append(f"{name},{classes[k]}," + ",".join(str(v * scale) for v in box))
    (folder / "labels.csv").write_text("path,labels,split,patient\n" + "\n".join(rows) + "\n")
    (folder / "boxes.csv").write_text("image,label,x0,y0,x1,y1\n" + "\n".join(boxes) + "\n")
    return folder
