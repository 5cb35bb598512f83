"""CheXlocalize (Saporta et al., Nature Machine Intelligence 2022): radiologists' segmentations of 10 pathologies on
CheXpert's validation and test sets, read as the download ships it::

    R/CheXpert/val/patient64541/study1/view1_frontal.jpg      (and test/)
    R/CheXpert/val_labels.csv                                 Path (CheXpert-v1.0/valid/patient64541/...), labels
    R/CheXlocalize/gt_segmentations_val.json                  {image id: {task: COCO RLE {size: [h, w], counts}}}

Images are named as CheXlocalize names them (``patient64541_study1_view1_frontal``), findings by its task names
(CheXpert's ``Lung Opacity`` is its ``Airspace Opacity``); masks are decoded with pycocotools. Each finding carries its
mask at the image's own size too, where the evaluation scores it, as CheXlocalize's evaluator does.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import ModelConfig, require
from ..errors import UserError
from .cache import to_channels
from .groundtruth import EvalSample, Finding, Shard, Skipped, resize_mask
from .images import image_shape, pixels_to_tensor, read_image
from .manifests import Check
from .sources import DatasetSource, EvalOptions, register_dataset
from .table import label_key, read_frame

LOCALIZATION_TASKS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
                      "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices")
TASK_ALIASES = {"lung opacity": "Airspace Opacity"}  # CheXpert's column name for CheXlocalize's task


def task_name(name: str) -> str | None:
    """CheXlocalize's task for a class name (case and spacing ignored; ``Lung Opacity`` is ``Airspace Opacity``)."""
    key = label_key(name)
    return TASK_ALIASES.get(key) or next((t for t in LOCALIZATION_TASKS if t.lower() == key), None)


def image_id(path: str) -> str:
    """CheXlocalize's id of a CheXpert path: ``.../patient64541/study1/view1_frontal.jpg`` ->
    ``patient64541_study1_view1_frontal``."""
    parts = path.replace("\\", "/").split("/")
    if len(parts) < 3:
        raise UserError(f"{path!r} is not a CheXpert path (.../patientN/studyM/viewK_frontal.jpg)")
    return f"{parts[-3]}_{parts[-2]}_{Path(parts[-1]).stem}"


def decode_rle(item: object, where: str) -> np.ndarray:
    """A bool ``(h, w)`` mask of one COCO RLE ``{"size": [h, w], "counts": str}`` (pycocotools)."""
    from pycocotools import mask as coco_mask

    if not (isinstance(item, dict) and isinstance(item.get("counts"), str) and isinstance(item.get("size"), list)
            and len(item["size"]) == 2 and all(isinstance(v, int) and v > 0 for v in item["size"])):
        raise UserError(f"{where} is not a COCO run-length mask ({{\"size\": [h, w], \"counts\": \"...\"}})")
    try:
        with warnings.catch_warnings():  # pycocotools 2.0.x on NumPy 2: a DeprecationWarning about __array__(copy)
            warnings.simplefilter("ignore", DeprecationWarning)
            return coco_mask.decode({"size": item["size"], "counts": item["counts"].encode("ascii")}).astype(bool)
    except (ValueError, UnicodeEncodeError, TypeError):
        raise UserError(f"{where}: its counts are not COCO run-length text") from None


@dataclass
class CheXlocalizeOptions:
    """The ``chexlocalize`` dataset's option: which of its sets is evaluated, ``val`` or ``test``."""

    split: str = "val"

    def __post_init__(self) -> None:
        require(self.split in ("val", "test"), f"data.split must be val or test, got {self.split!r}")


@register_dataset("chexlocalize", options=CheXlocalizeOptions)
class CheXlocalizeSource(DatasetSource):
    """CheXlocalize's ``val`` or ``test`` set (``data.split``) with its segmentations, for evaluation."""

    per_finding = True

    def paths(self) -> tuple[Path, Path, Path]:
        """``(image folder, labels table, segmentation JSON)`` of ``data.split``."""
        root, split = self.root(), self.data.split
        return (root / "CheXpert" / split, root / "CheXpert" / f"{split}_labels.csv",
                root / "CheXlocalize" / f"gt_segmentations_{split}.json")

    def segmentations(self) -> dict[str, dict[str, object]]:
        """The ground-truth JSON, checked to be CheXlocalize's layout: ``{image id: {task: RLE}}``."""
        _, _, path = self.paths()
        if not path.is_file():
            raise UserError(f"{path} not found (CheXlocalize's ground truth for the {self.data.split} set)")
        try:
            gt = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path.name} is not JSON") from None
        if not isinstance(gt, dict) or not gt or not all(isinstance(v, dict) for v in gt.values()):
            raise UserError(f"{path.name} is not CheXlocalize's layout ({{image id: {{task: COCO RLE}}}})")
        unknown = sorted({t for v in gt.values() for t in v} - set(LOCALIZATION_TASKS))
        if unknown:
            raise UserError(f"{path.name} is not CheXlocalize's layout: {len(unknown)} task name(s) outside its 10 "
                            f"localization tasks (e.g. {unknown[0][:40]!r})")
        return gt

    def images(self) -> dict[str, Path]:
        """Each image id of the labels table and its file (matched by patient/study/view, not by the table's
        ``CheXpert-v1.0/valid/...`` prefix)."""
        folder, labels, _ = self.paths()
        frame = read_frame(labels, f"CheXlocalize's {self.data.split} labels")
        if "Path" not in frame.columns:
            raise UserError(f"{labels.name} has no Path column (CheXpert's labels table)")
        out = {}
        for value in frame["Path"]:
            parts = str(value).replace("\\", "/").split("/")
            out[image_id(str(value))] = folder.joinpath(*parts[-3:])
        return out

    def tasks(self, model: ModelConfig) -> list[tuple[int, str]]:
        """``(class index, task)`` of the model's classes that are CheXlocalize tasks."""
        found = [(i, task_name(c)) for i, c in enumerate(model.class_names)]
        tasks = [(i, t) for i, t in found if t is not None]
        if not tasks:
            raise UserError(f"none of the model's classes ({', '.join(model.class_names)}) is one of CheXlocalize's "
                            f"tasks ({', '.join(LOCALIZATION_TASKS)})")
        return tasks

    def training(self, model: ModelConfig):
        raise UserError("CheXlocalize is an evaluation set; train on CheXpert (dataset: table, see the README's "
                        "recipe) and evaluate here")

    def _matched(self) -> tuple[dict[str, dict[str, object]], dict[str, Path]]:
        gt, images = self.segmentations(), self.images()
        orphans = sorted(set(gt) - set(images))
        if orphans:
            raise UserError(f"{len(orphans)} image id(s) of the segmentations have no row in "
                            f"{self.paths()[1].name} (e.g. {orphans[0][:60]})")
        return gt, images

    def evaluation(self, model: ModelConfig, options: EvalOptions, shard: Shard = (0, 1)
                   ) -> Iterator[EvalSample | Skipped]:
        """The segmented images, checked before any is read (a missing image or a segmentation of another size is
        a UserError here, not a skipped image later)."""
        gt, images = self._matched()
        tasks = self.tasks(model)
        ids = [i for i in sorted(gt) if any(t in gt[i] for _, t in tasks)]
        ids = ids[:options.limit] if options.limit is not None else ids
        self._check_images(ids, gt, images, tasks)
        return self._samples(ids, gt, images, tasks, model, shard)

    def _samples(self, ids: list[str], gt: dict[str, dict[str, object]], images: dict[str, Path],
                 tasks: list[tuple[int, str]], model: ModelConfig, shard: Shard) -> Iterator[EvalSample | Skipped]:
        for k, cxr_id in enumerate(ids):
            if k % shard[1] != shard[0]:
                continue
            try:
                yield self._sample(cxr_id, images[cxr_id], gt[cxr_id], tasks, model)
            except UserError as e:
                yield Skipped(cxr_id, str(e).replace(str(images[cxr_id]), "the image"))

    def _check_images(self, ids: list[str], gt: dict[str, dict[str, object]], images: dict[str, Path],
                      tasks: list[tuple[int, str]]) -> None:
        """Before anything is localized: every image is there, and every segmentation is its image's size (read
        from the headers); a UserError naming the first that is not."""
        missing = [i for i in ids if not images[i].is_file()]
        if missing:
            raise UserError(f"{len(missing)} image id(s) of {self.paths()[2].name} have no image under "
                            f"{self.paths()[0]} (e.g. {missing[0][:60]}); check the copy with check-data")
        for cxr_id in ids:
            h, w = image_shape(images[cxr_id])
            for _, task in tasks:
                item = gt[cxr_id].get(task)
                size = item.get("size") if isinstance(item, dict) else None
                if isinstance(size, list) and len(size) == 2 and size != [h, w]:
                    raise UserError(f"{cxr_id}: its {task} segmentation is {size[1]}x{size[0]}, its image {w}x{h} "
                                    f"({self.paths()[2].name} and the images are of different releases?)")

    def _sample(self, cxr_id: str, path: Path, items: dict[str, object], tasks: list[tuple[int, str]],
                model: ModelConfig) -> EvalSample:
        if not path.is_file():
            raise UserError("its image is missing")
        px = read_image(path).pixels
        size = tuple(model.img_size)
        findings = []
        for c, task in tasks:
            if task not in items:
                continue
            mask = decode_rle(items[task], f"the {task} segmentation")  # its size checked by _check_images
            if mask.any():
                findings.append(Finding(task, c, resize_mask(mask, size), original=mask))
        return EvalSample(cxr_id, to_channels(pixels_to_tensor(px, size), model.in_channels), findings)

    def check(self) -> list[Check]:
        gt, images = self._matched()
        folder = self.paths()[0]
        missing = [i for i in gt if not images[i].is_file()]
        out = [Check(f"CheXpert/{self.data.split}", "partial" if missing else "ok",
                     f"{len(gt) - len(missing)} of {len(gt)} segmented images found under {folder}")]
        for task in LOCALIZATION_TASKS:
            n = sum(1 for v in gt.values() if task in v and decode_rle(v[task], f"the {task} segmentation").any())
            out.append(Check(task, "ok", f"{n} images with a segmentation"))
        return out
