"""Evaluation samples: an image with the ground truth of each finding it carries, at the model's input size.

Each source yields :class:`EvalSample` or, for an image listed but unreadable or missing, :class:`Skipped` with the
reason, so an evaluation goes on and reports how many it skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import ModelConfig
from ..data.images import pixels_to_tensor
from ..errors import UserError
from ..report.figures import resize_map
from ..geometry import Box, box_mask, mask_box


@dataclass
class Finding:
    """One ground-truth finding of a sample. ``truth``: ``(H, W)`` bool at the model's input size; ``parts``:
    ``(K, 3)`` x, y, visible in the same pixels (CUB), else None; ``boxes``: the finding's separate ground-truth
    boxes in the same pixels (NIH boxes, synthetic objects), for region-level scores."""

    name: str
    class_index: int
    truth: np.ndarray
    parts: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)


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


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_map(np.asarray(mask, np.float32), size) >= 0.5


Shard = tuple[int, int]  # (rank, world size): keep the items whose position % world == rank, before reading them


def synthetic_samples(config: ModelConfig, n: int, seed: int, multilabel: bool,
                      shard: Shard = (0, 1)) -> Iterator[EvalSample]:
    """Planted-lesion images of the model's classes (its class names must be synthetic shapes)."""
    from ..data.synthetic import SHAPES, SyntheticLesions

    if not set(config.class_names) <= set(SHAPES):
        raise UserError(f"the synthetic dataset needs a model trained on synthetic shapes ({', '.join(SHAPES)}); "
                        f"this one's classes are {', '.join(config.class_names)}")
    data = SyntheticLesions(config.class_names, n=n, size=config.img_size[0], channels=config.in_channels,
                            multilabel=multilabel, seed=seed)
    for i in range(shard[0], n, shard[1]):
        s = data.sample(i)
        yield EvalSample(f"synthetic-{seed}-{i:05d}", pixels_to_tensor(s.image.transpose(1, 2, 0), config.img_size),
                         [Finding(config.class_names[k], k, m, boxes=[mask_box(m)] if m.any() else [])
                          for k in np.flatnonzero(s.labels) for m in [_resize_mask(s.masks[k], config.img_size)]])


def _finding_key(name: str) -> str:
    """A finding's name as compared with a model's class names: case, spaces and underscores ignored, and the box
    list's "Infiltrate" the same as the labels' "Infiltration"."""
    from ..data.nih import BOX_NAME_TO_LABEL

    name = BOX_NAME_TO_LABEL.get(name, name)
    return "".join(ch for ch in name.lower() if ch.isalnum())


def nih_samples(root: str | Path, config: ModelConfig, limit: int | None = None,
                shard: Shard = (0, 1)) -> Iterator[EvalSample | Skipped]:
    """Images of ``BBox_List_2017.csv`` (in its order) with a box of a finding the model knows."""
    from ..data.images import read_image
    from ..data.nih import IMAGE_SIZE, find_images, read_boxes

    root = Path(root)
    by_image: OrderedDict[str, list] = OrderedDict()
    classes = {_finding_key(c): i for i, c in enumerate(config.class_names)}  # "Infiltrate", "pleural thickening"
    unmatched: OrderedDict[str, int] = OrderedDict()
    for b in read_boxes(root / "BBox_List_2017.csv"):
        k = classes.get(_finding_key(b.finding))
        if k is None:
            unmatched[b.finding] = unmatched.get(b.finding, 0) + 1
        else:
            by_image.setdefault(b.image, []).append((b, k))
    if not by_image:
        raise UserError(f"none of the box list's findings is a class of this model ({', '.join(config.class_names)})")
    if shard[0] == 0:  # ground truth no class of the model can explain: counted and named, once
        for finding, n in unmatched.items():
            yield Skipped(f"{finding} boxes", f"{n} box(es) of {finding}, which is not a class of this model "
                          f"({', '.join(config.class_names)})")
    images = find_images(root)
    for k, (name, boxes) in enumerate(by_image.items()):
        if limit is not None and k >= limit:
            return
        if k % shard[1] != shard[0]:
            continue
        if name not in images:
            yield Skipped(name, f"{name} is in BBox_List_2017.csv but not under {root}/images*")
            continue
        try:
            px = read_image(images[name]).pixels
        except UserError as e:
            yield Skipped(name, str(e))
            continue
        findings: dict[str, Finding] = {}
        for b, c in boxes:  # several boxes of one finding: their union, and each box for the region-level scores
            box = b.scaled(config.img_size, IMAGE_SIZE)
            truth = box_mask(box, config.img_size)
            f = findings.setdefault(b.finding, Finding(config.class_names[c], c, truth))
            f.truth = f.truth | truth
            f.boxes.append(box)
        yield EvalSample(name, pixels_to_tensor(px, config.img_size), list(findings.values()))


CUB_TRUTHS = ("segmentation", "parts", "bbox")


def cub_samples(root: str | Path, config: ModelConfig, truth: str = "segmentation", part_half_width: int = 16,
                limit: int | None = None, split: str = "test", shard: Shard = (0, 1)) -> Iterator[EvalSample | Skipped]:
    """CUB images of the model's classes. Cropped to the bird's box, as ProtoPNet trains, for ``segmentation`` and
    ``parts`` ground truth; whole images for ``bbox`` (in a crop the box would be the whole image).
    ``part_half_width`` is in original-image pixels."""
    from ..data.cub import CUBIndex, find_segmentations, part_mask, read_parts
    from ..data.images import read_image

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
                         [Finding(name, c, _resize_mask(full[y0:y1, x0:x1], config.img_size), p)])
