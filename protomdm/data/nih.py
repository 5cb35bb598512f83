"""NIH ChestX-ray14 as its publisher ships it (``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, ``train_val_list.txt``,
``test_list.txt``, images under ``images*/images/`` or flat)."""

from __future__ import annotations

import csv
import io
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig
from ..errors import UserError
from ..geometry import box_mask
from .groundtruth import EvalSample, Finding, Shard, Skipped
from .images import pixels_to_tensor, read_image
from .manifests import Check, check_data
from .sources import DatasetSource, EvalOptions, register_dataset

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
BOX_NAME_TO_LABEL = {"Infiltrate": "Infiltration"}  # the box list and the label list spell this one differently
IMAGE_SIZE = (1024, 1024)  # the published PNGs' size, the frame of the boxes


@dataclass(frozen=True)
class NIHBox:
    """One row of ``BBox_List_2017.csv``: a finding's box on an image, in the 1024x1024 image's pixels."""

    image: str
    finding: str  # label-list spelling ("Infiltration")
    x: float
    y: float
    w: float
    h: float
    line: int

    def scaled(self, size: tuple[int, int], original: tuple[int, int] = IMAGE_SIZE) -> tuple[int, int, int, int]:
        """The box ``(x0, y0, x1, y1)`` (exclusive ends) in an image resized from ``original`` to ``size`` (H, W),
        rounded outwards so it covers every pixel the box touches."""
        sy, sx = size[0] / original[0], size[1] / original[1]
        x0, y0 = int(np.floor(self.x * sx)), int(np.floor(self.y * sy))
        x1, y1 = int(np.ceil((self.x + self.w) * sx)), int(np.ceil((self.y + self.h) * sy))
        return max(0, x0), max(0, y0), min(size[1], x1), min(size[0], y1)


def read_boxes(path: str | Path) -> list[NIHBox]:
    """Rows of ``BBox_List_2017.csv``: header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` then
    ``name,finding,x,y,w,h`` (trailing empty columns allowed). A malformed row names its line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing dataset file: {path}")
    boxes = []
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16")
    else:
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark (Excel writes one) is not part of the header
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # every byte is a Latin-1 character: the numbers parse, names are kept
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if header[:2] != ["Image Index", "Finding Label"]:
            raise UserError(f"{path}: expected the columns 'Image Index,Finding Label,Bbox [x,y,w,h]', got "
                            f"{','.join(header[:3])}")
        for row in reader:
            n = reader.line_num
            while row and not row[-1].strip():
                row = row[:-1]
            if not row:
                continue
            if len(row) != 6:
                raise UserError(f"{path}, line {n}: expected 6 values (image, finding, x, y, w, h), got {len(row)}")
            finding = BOX_NAME_TO_LABEL.get(row[1], row[1])
            if finding not in FINDINGS:
                raise UserError(f"{path}, line {n}: unknown finding {row[1]!r}")
            try:
                x, y, w, h = (float(v) for v in row[2:])
            except ValueError:
                raise UserError(f"{path}, line {n}: box values must be numbers, got {row[2:]}") from None
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                raise UserError(f"{path}, line {n}: box values must be finite numbers, got {row[2:]}")
            if w <= 0 or h <= 0:
                raise UserError(f"{path}, line {n}: box width and height must be positive, got {w} x {h}")
            boxes.append(NIHBox(row[0], finding, x, y, w, h, n))
    return boxes


def find_images(root: Path) -> dict[str, Path]:
    """Image file name -> path, from ``images_*/images/`` folders or a flat ``images/`` folder."""
    found: dict[str, Path] = {}
    for folder in sorted(root.glob("images*")):
        for p in folder.rglob("*.png"):
            found.setdefault(p.name, p)
    return found


def read_data_entry(path: Path) -> dict[str, list[str]]:
    """Image Index -> finding labels (``No Finding`` -> [])."""
    if not path.is_file():
        raise UserError(f"missing dataset file: {path}")
    out = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if header[:2] != ["Image Index", "Finding Labels"]:
            raise UserError(f"{path}: expected the columns 'Image Index,Finding Labels,...', got {header[:2]}")
        for n, row in enumerate(reader, 2):
            if len(row) < 2:
                raise UserError(f"{path}, line {n}: expected at least 2 columns, got {len(row)}")
            out[row[0]] = [] if row[1] == "No Finding" else row[1].split("|")
    return out


class NIHDataset(Dataset):
    """Multi-label chest X-rays, grey, resized to ``img_size``; items are ``(image (1, H, W), multi-hot (F,),
    empty mask (F, H, W))``. ``class_names`` are findings of :data:`FINDINGS`."""

    def __init__(self, root: str | Path, split: str, class_names: tuple[str, ...], img_size: tuple[int, int]) -> None:
        self.root, self.img_size, self.class_names = Path(root), tuple(img_size), tuple(class_names)
        unknown = [c for c in class_names if c not in FINDINGS]
        if unknown:
            raise UserError(f"findings not in NIH ChestX-ray14: {', '.join(unknown)} (it has: {', '.join(FINDINGS)})")
        labels = read_data_entry(self.root / "Data_Entry_2017.csv")
        split_file = self.root / ("train_val_list.txt" if split == "train" else "test_list.txt")
        if not split_file.is_file():
            raise UserError(f"missing dataset file: {split_file}")
        images = find_images(self.root)
        names = [n.strip() for n in split_file.read_text().split() if n.strip()]
        self.items = [(images[n], labels[n]) for n in names if n in images and n in labels]
        if not self.items:
            raise UserError(f"no images of {split_file.name} found under {self.root}/images*")

    def __len__(self) -> int:
        return len(self.items)

    def targets(self) -> torch.Tensor:
        """Every item's multi-hot target ``(N, F)``, without reading the images."""
        return torch.tensor([[float(c in f) for c in self.class_names] for _, f in self.items])

    def source(self, k: int) -> str:
        """Where item ``k`` comes from, for a prototype's provenance: its file name (the publisher's)."""
        return self.items[k][0].name

    def __getitem__(self, k: int):
        path, findings = self.items[k]
        px = read_image(path).pixels
        px = px.mean(-1) if px.ndim == 3 else px
        y = torch.tensor([float(c in findings) for c in self.class_names])
        return pixels_to_tensor(px, self.img_size), y, torch.zeros(len(self.class_names), *self.img_size, dtype=torch.uint8)


def _finding_key(name: str) -> str:
    """A finding's name as compared with a model's class names: case, spaces and underscores ignored, and the box
    list's "Infiltrate" the same as the labels' "Infiltration"."""
    name = BOX_NAME_TO_LABEL.get(name, name)
    return "".join(ch for ch in name.lower() if ch.isalnum())


def nih_samples(root: str | Path, config: ModelConfig, limit: int | None = None,
                shard: Shard = (0, 1)) -> Iterator[EvalSample | Skipped]:
    """Images of ``BBox_List_2017.csv`` (in its order) with a box of a finding the model knows."""
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


@register_dataset("nih")
class NIHSource(DatasetSource):
    """NIH ChestX-ray14 as published (multi-label; evaluation on ``BBox_List_2017.csv``)."""

    per_finding = True

    def training(self, model: ModelConfig) -> tuple[Dataset, Dataset, bool]:
        root = self.root()
        return (NIHDataset(root, "train", model.class_names, model.img_size),
                NIHDataset(root, "test", model.class_names, model.img_size), True)

    def evaluation(self, model: ModelConfig, options: EvalOptions, shard: Shard = (0, 1)
                   ) -> Iterator[EvalSample | Skipped]:
        return nih_samples(self.root(), model, options.limit, shard=shard)

    def check(self) -> list[Check]:
        return check_data("nih", self.root())
