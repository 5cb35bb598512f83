"""CUB-200-2011 as its publisher ships it (``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
``classes.txt``, ``bounding_boxes.txt``, ``parts/parts.txt``, ``parts/part_locs.txt``, ``images/``) and its separate
segmentations (``segmentations/<class>/<image>.png``, at the root or beside it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig
from ..errors import UserError
from ..geometry import box_mask
from .groundtruth import EvalSample, Finding, Shard, Skipped, resize_mask
from .images import pixels_to_tensor, read_image
from .manifests import Check, check_data
from .sources import DatasetSource, EvalOptions, register_dataset


def read_table(path: Path, columns: int) -> list[list[str]]:
    """Rows of a whitespace-separated publisher file; a malformed row names its line number."""
    if not path.is_file():
        raise UserError(f"missing dataset file: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns:
            raise UserError(f"{path}, line {n}: expected {columns} columns, got {len(parts)}")
        rows.append(parts)
    return rows


@dataclass
class CUBIndex:
    """The publisher's index files, read once: per image id its path under ``images/``, class name, split and
    bird box ``(x, y, w, h)``."""

    class_names: list[str]  # classes.txt, in order
    paths: dict[str, str]
    labels: dict[str, str]  # image id -> class name
    is_train: dict[str, bool]
    boxes: dict[str, tuple[float, float, float, float]]

    @classmethod
    def read(cls, root: str | Path) -> "CUBIndex":
        root = Path(root)
        classes = dict(read_table(root / "classes.txt", 2))
        return cls(list(classes.values()), dict(read_table(root / "images.txt", 2)),
                   {i: classes.get(c, c) for i, c in read_table(root / "image_class_labels.txt", 2)},
                   {i: t == "1" for i, t in read_table(root / "train_test_split.txt", 2)},
                   {i: tuple(map(float, b)) for i, *b in read_table(root / "bounding_boxes.txt", 5)})

    def select(self, split: str, class_names: tuple[str, ...] | list[str]) -> list[str]:
        """Image ids of ``split`` (train, test or all) whose class is one of ``class_names``, in file order."""
        wanted = set(class_names)
        return [i for i in self.paths if self.labels.get(i) in wanted
                and (split == "all" or self.is_train.get(i) == (split == "train"))]

    def bird_box(self, image_id: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The bird's box ``(x0, y0, x1, y1)`` (exclusive ends) in whole pixels of an image of ``size`` (H, W),
        rounded outwards and clipped; the whole image if the id has no box."""
        if image_id not in self.boxes:
            return 0, 0, size[1], size[0]
        x, y, w, h = self.boxes[image_id]
        return int(x), int(y), min(size[1], int(np.ceil(x + w))), min(size[0], int(np.ceil(y + h)))


class CUBDataset(Dataset):
    """CUB-200-2011 images cropped to the bird's bounding box (as ProtoPNet trains), resized to ``img_size``.

    ``class_names`` are the publisher's folder names (``001.Black_footed_Albatross``...); a name the copy lacks
    is refused. Items are ``(image (3, H, W) in [0, 1], class index, empty mask (1, H, W))``.
    """

    def __init__(self, root: str | Path, split: str, class_names: tuple[str, ...], img_size: tuple[int, int],
                 crop: bool = True) -> None:
        self.root, self.img_size, self.crop = Path(root), tuple(img_size), crop
        self.index = CUBIndex.read(self.root)
        missing = sorted(set(class_names) - set(self.index.class_names))
        if missing:
            raise UserError(f"classes not in {self.root / 'classes.txt'}: {', '.join(missing[:5])}"
                            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        position = {name: k for k, name in enumerate(class_names)}
        self.items = [(i, self.index.paths[i], position[self.index.labels[i]])
                      for i in self.index.select("train" if split == "train" else "test", class_names)]

    def __len__(self) -> int:
        return len(self.items)

    def source(self, k: int) -> str:
        """Where item ``k`` comes from, for a prototype's provenance: its path under ``images/``."""
        return str(self.items[k][1])

    def __getitem__(self, k: int):
        image_id, rel, label = self.items[k]
        px = read_image(self.root / "images" / rel).pixels
        px = np.repeat(px[..., None], 3, -1) if px.ndim == 2 else px
        if self.crop:
            x0, y0, x1, y1 = self.index.bird_box(image_id, px.shape[:2])
            px = px[y0:y1, x0:x1]
        return pixels_to_tensor(px, self.img_size), label, torch.zeros(1, *self.img_size, dtype=torch.uint8)


def read_parts(root: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Part names (``parts/parts.txt``, 15) and, per image id, the ``(15, 3)`` array of x, y, visible from
    ``parts/part_locs.txt`` (original image pixels; invisible parts have x = y = 0)."""
    root = Path(root)
    names = [name for _, name in read_table(root / "parts" / "parts.txt", 2)]
    locs: dict[str, list[list[float]]] = {}
    path = root / "parts" / "part_locs.txt"
    for n, (image_id, part, x, y, vis) in enumerate(read_table(path, 5), 1):
        try:
            k, row = int(part) - 1, [float(x), float(y), float(vis)]
        except ValueError:
            raise UserError(f"{path}: a row for image {image_id} has a non-number ({part} {x} {y} {vis})") from None
        if not 0 <= k < len(names):
            raise UserError(f"{path}: image {image_id} names part {part}, but parts.txt has {len(names)} parts")
        locs.setdefault(image_id, [[0.0, 0.0, 0.0] for _ in names])[k] = row
    return names, {i: np.asarray(v, np.float64) for i, v in locs.items()}


def find_segmentations(root: Path) -> Path | None:
    """The segmentation folder: ``root/segmentations`` or ``root/../segmentations`` (as the two archives unpack)."""
    for p in (root / "segmentations", root.parent / "segmentations"):
        if p.is_dir():
            return p
    return None


def part_mask(parts: np.ndarray, size: tuple[int, int], half_width: int) -> np.ndarray:
    """``(H, W)`` bool: a ``(2 half_width + 1)``-pixel square around each visible part location."""
    m = np.zeros(size, bool)
    for x, y, vis in parts:
        if vis > 0:
            xi, yi = int(np.floor(x)), int(np.floor(y))
            m[max(0, yi - half_width):max(0, yi + half_width + 1), max(0, xi - half_width):max(0, xi + half_width + 1)] = True
    return m


CUB_TRUTHS = ("segmentation", "parts", "bbox")


def cub_samples(root: str | Path, config: ModelConfig, truth: str = "segmentation", part_half_width: int = 16,
                limit: int | None = None, split: str = "test", shard: Shard = (0, 1)) -> Iterator[EvalSample | Skipped]:
    """CUB images of the model's classes. Cropped to the bird's box, as ProtoPNet trains, for ``segmentation`` and
    ``parts`` ground truth; whole images for ``bbox`` (in a crop the box would be the whole image).
    ``part_half_width`` is in original-image pixels."""
    if truth not in CUB_TRUTHS:
        raise UserError(f"CUB ground truth must be one of {', '.join(CUB_TRUTHS)}, got {truth!r}")
    root = Path(root)
    index = CUBIndex.read(root)
    _, parts = read_parts(root)
    seg_dir = find_segmentations(root)
    if truth == "segmentation" and seg_dir is None:
        raise UserError(f"no segmentations/ folder at {root} or beside it (CUB ships them as a separate archive); "
                        "use --truth parts or --truth bbox, or unpack segmentations.tgz")
    ids = index.select(split, config.class_names)
    for k, i in enumerate(ids[:limit] if limit is not None else ids):
        if k % shard[1] != shard[0]:
            continue
        rel = index.paths[i]
        try:
            px = read_image(root / "images" / rel).pixels
            h, w = px.shape[:2]
            if truth == "segmentation":
                seg = read_image(seg_dir / Path(rel).with_suffix(".png")).pixels
                full = (seg if seg.ndim == 2 else seg.mean(-1)) >= 0.5
            elif truth == "parts":
                full = part_mask(parts.get(i, np.zeros((0, 3))), (h, w), part_half_width)
            else:
                if i not in index.boxes:
                    raise KeyError("bounding_boxes.txt")
                full = box_mask(index.bird_box(i, (h, w)), (h, w))
        except (UserError, KeyError) as e:
            yield Skipped(rel, str(e) if isinstance(e, UserError) else f"{rel}: no {e.args[0]} entry")
            continue
        x0, y0, x1, y1 = (0, 0, w, h) if truth == "bbox" else index.bird_box(i, (h, w))
        p = parts.get(i)
        if p is not None:  # part locations into the crop's, then the input's pixels
            p = p.copy()
            p[:, 0] = (p[:, 0] - x0) * config.img_size[1] / (x1 - x0)
            p[:, 1] = (p[:, 1] - y0) * config.img_size[0] / (y1 - y0)
        name = index.labels[i]
        c = config.class_names.index(name)
        crop = px[y0:y1, x0:x1]
        if config.in_channels == 3 and crop.ndim == 2:
            crop = np.repeat(crop[..., None], 3, -1)
        yield EvalSample(rel, pixels_to_tensor(crop, config.img_size),
                         [Finding(name, c, resize_mask(full[y0:y1, x0:x1], config.img_size), p)])


@register_dataset("cub")
class CUBSource(DatasetSource):
    """CUB-200-2011 as published (single-label, bird crops; evaluation on segmentations, parts or boxes)."""

    def training(self, model: ModelConfig) -> tuple[Dataset, Dataset, bool]:
        root = self.root()
        return (CUBDataset(root, "train", model.class_names, model.img_size),
                CUBDataset(root, "test", model.class_names, model.img_size), False)

    def evaluation(self, model: ModelConfig, options: EvalOptions, shard: Shard = (0, 1)
                   ) -> Iterator[EvalSample | Skipped]:
        return cub_samples(self.root(), model, options.truth, options.part_half_width, options.limit, shard=shard)

    def check(self) -> list[Check]:
        return check_data("cub", self.root())
