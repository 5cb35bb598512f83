"""Results in CheXlocalize's own formats (Saporta et al. 2022), so that its ``eval.py`` scores them unchanged.

Under ``FOLDER`` (one per method)::

    maps/<image id>_<task>_map.pkl     as its gradcam_maps_val: map (1, 1, h, w) float32 tensor at the model's input
                                       size, prob (the class probability), task, gt (1: the image has that finding),
                                       cxr_img (the model's input, (C, h, w)), cxr_dims (the image's width, height)
    segmentations.json                 {image id: {task: COCO RLE}} for every image x all 10 tasks: the map brought
                                       to the image's size (bilinear) and kept above the evaluated percentile; an
                                       all-zero mask where the image has no map of that task (an image without
                                       any map is left out: CheXlocalize's evaluator counts it as all zero)

``eval.py --metric iou --gt_path gt_segmentations_val.json --pred_path FOLDER/segmentations.json`` and
``eval.py --metric hitmiss --gt_path ... --pred_path FOLDER/maps`` then give, image for image, the IoU and hit that
``protomdm evaluate`` wrote in ``results.csv``.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data.chexlocalize import LOCALIZATION_TASKS
from ..data.maps import map_stem, read_map_pickle
from ..files import atomic_write
from ..geometry import resize_heatmap, top_percentile_mask


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE ``{"size": [h, w], "counts": str}`` of a ``(h, w)`` mask (pycocotools, as CheXlocalize encodes)."""
    from pycocotools import mask as coco_mask

    with warnings.catch_warnings():  # pycocotools 2.0.x on NumPy 2: a DeprecationWarning about __array__(copy)
        warnings.simplefilter("ignore", DeprecationWarning)
        item = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in item["size"]], "counts": item["counts"].decode("ascii")}


def write_map(folder: Path, image_id: str, task: str, heatmap: np.ndarray, prob: float, image: torch.Tensor,
              dims: tuple[int, int]) -> Path:
    """Write ``maps/<image id>_<task>_map.pkl``. ``heatmap``: ``(h, w)``; ``image``: the model's input ``(C, h, w)``;
    ``dims``: the original image's ``(height, width)`` (stored as CheXlocalize's ``cxr_dims``, width first)."""
    record = {"map": torch.from_numpy(np.asarray(heatmap, dtype=np.float32).copy())[None, None],
              "prob": float(prob), "task": task, "gt": 1,
              "cxr_img": image.detach().to("cpu", torch.float32).clone(), "cxr_dims": (int(dims[1]), int(dims[0]))}
    path = folder / "maps" / f"{map_stem(image_id, task)}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(pickle.dumps(record, protocol=4)))
    return path


def original_size_map(record: dict) -> np.ndarray:
    """A map record's heatmap at its image's size ``(h, w)``, as CheXlocalize's evaluator resizes it."""
    w, h = record["cxr_dims"]
    return resize_heatmap(record["map"].numpy().reshape(record["map"].shape[-2:]), (int(h), int(w)))


def write_segmentations(folder: Path, percentile: float) -> Path:
    """Write ``segmentations.json`` from the maps under ``folder/maps`` (see the module docstring)."""
    masks: dict[str, dict[str, dict]] = {}
    dims: dict[str, tuple[int, int]] = {}
    for path in sorted((folder / "maps").glob("*_map.pkl")):
        record = read_map_pickle(path)
        image_id = path.name[: -len(f"_{record['task']}_map.pkl")]
        heat = original_size_map(record)
        masks.setdefault(image_id, {})[record["task"]] = encode_rle(top_percentile_mask(heat, percentile))
        dims[image_id] = heat.shape
    out = {}
    for image_id, found in sorted(masks.items()):
        zero = encode_rle(np.zeros(dims[image_id], bool))
        out[image_id] = {t: found.get(t, zero) for t in LOCALIZATION_TASKS}
    path = folder / "segmentations.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(out)))
    return path
