"""CheXlocalize as a dataset source, on a miniature copy in the download's layout: CheXpert/val images and labels,
CheXlocalize/gt_segmentations_val.json of COCO RLE masks (encoded here with pycocotools, as its authors did)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from protomdm.cli import main
from protomdm.data import dataset_source
from protomdm.data.chexlocalize import LOCALIZATION_TASKS, image_id, task_name
from protomdm.data.sources import EvalOptions

from test_chest_tables import CHEXPERT_HEADER
from protomdm.config import DataConfig
from test_table import model_cfg, png


def data(root, **kw) -> DataConfig:
    return DataConfig(dataset="chexlocalize", root=str(root), **kw)


def rle(mask: np.ndarray) -> dict:
    item = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in item["size"]], "counts": item["counts"].decode("ascii")}


def chexlocalize_copy(root, n=3, h=30, w=40):
    """``n`` patients, one frontal view each; patient k has an Atelectasis segmentation in a known box (and the
    first also Airspace Opacity); every other task's mask is empty, as in the download."""
    columns = CHEXPERT_HEADER.split(",")
    lines, gt, boxes = [CHEXPERT_HEADER], {}, {}
    for k in range(n):
        pid = f"patient{64541 + k}"
        png(root / "CheXpert" / "val" / pid / "study1" / "view1_frontal.jpg", h=h, w=w, value=60 + 40 * k)
        cells = dict.fromkeys(columns, "0.0")
        cells.update({"Path": f"CheXpert-v1.0/valid/{pid}/study1/view1_frontal.jpg", "Sex": "Male", "Age": "70",
                      "Frontal/Lateral": "Frontal", "AP/PA": "AP", "Atelectasis": "1.0", "Lung Opacity": "1.0"})
        lines.append(",".join(cells[c] for c in columns))
        cxr = f"{pid}_study1_view1_frontal"
        items = {t: rle(np.zeros((h, w), bool)) for t in LOCALIZATION_TASKS}
        box = np.zeros((h, w), bool)
        box[5 + k:15 + k, 8:20 + 3 * k] = True
        items["Atelectasis"] = rle(box)
        boxes[cxr] = box
        if k == 0:
            opacity = np.zeros((h, w), bool)
            opacity[20:28, 2:30] = True
            items["Airspace Opacity"] = rle(opacity)
        gt[cxr] = items
    (root / "CheXpert" / "val_labels.csv").write_text("\n".join(lines) + "\n")
    (root / "CheXlocalize").mkdir(parents=True)
    (root / "CheXlocalize" / "gt_segmentations_val.json").write_text(json.dumps(gt))
    return boxes


def test_ids_and_task_names_are_chexlocalize_s():
    assert image_id("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg") == "patient64541_study1_view1_frontal"
    assert task_name("Lung Opacity") == "Airspace Opacity" and task_name("pleural  effusion") == "Pleural Effusion"
    assert task_name("Pneumonia") is None


def test_samples_carry_the_segmentations_under_their_ids(tmp_path):
    boxes = chexlocalize_copy(tmp_path)
    cfg = model_cfg(("Atelectasis", "Lung Opacity", "Pneumonia"), channels=1, size=30)
    cfg = type(cfg)(**{**cfg.__dict__, "img_size": (30, 40)})
    samples = list(dataset_source(data(tmp_path)).evaluation(cfg, EvalOptions()))
    assert [s.id for s in samples] == sorted(boxes)
    for s in samples:
        names = {f.name: f for f in s.findings}
        assert np.array_equal(names["Atelectasis"].truth, boxes[s.id])
        assert ("Airspace Opacity" in names) == (s.id == "patient64541_study1_view1_frontal")
        assert names["Atelectasis"].class_index == 0


def test_check_data_counts_segmentations_per_task(tmp_path, capsys):
    chexlocalize_copy(tmp_path)
    assert main(["check-data", "--dataset", "chexlocalize", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 segmented images found" in out
    assert "Atelectasis: 3 images with a segmentation" in out and "Airspace Opacity: 1 images" in out
    assert "Edema: 0 images" in out


@pytest.mark.parametrize("damage, message", [
    (lambda gt: [1, 2], "is not CheXlocalize's layout"),
    (lambda gt: {k: {"Lung Nodule": v["Edema"]} for k, v in gt.items()}, "task name(s) outside its 10"),
    (lambda gt: {**gt, "patient99999_study1_view1_frontal": gt["patient64541_study1_view1_frontal"]},
     "1 image id(s) of the segmentations have no row in val_labels.csv"),
])
def test_bad_ground_truth_is_one_line_and_exit_2(tmp_path, capsys, damage, message):
    chexlocalize_copy(tmp_path)
    path = tmp_path / "CheXlocalize" / "gt_segmentations_val.json"
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    assert main(["check-data", "--dataset", "chexlocalize", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_segmentation_of_another_size_skips_that_image_with_the_reason(tmp_path):
    chexlocalize_copy(tmp_path)
    path = tmp_path / "CheXlocalize" / "gt_segmentations_val.json"
    gt = json.loads(path.read_text())
    gt["patient64542_study1_view1_frontal"]["Atelectasis"] = rle(np.ones((31, 40), bool))
    path.write_text(json.dumps(gt))
    cfg = model_cfg(("Atelectasis",), channels=1, size=30)
    out = list(dataset_source(data(tmp_path)).evaluation(cfg, EvalOptions()))
    assert out[1].reason == "the Atelectasis segmentation is 40x31, its image 40x30"


def test_evaluate_names_images_and_findings_as_chexlocalize_does(tmp_path, capsys):
    import pandas as pd

    chexlocalize_copy(tmp_path)
    ckpt = tmp_path / "m.pt"
    assert main(["init-model", "--model", "xprotonet", "--backbone", "tiny", "--classes", "Atelectasis,Lung Opacity",
                 "--prototypes-per-class", "1", "--img-size", "32", "--grey", "--out", str(ckpt)]) == 0
    assert main(["evaluate", "--dataset", "chexlocalize", "--root", str(tmp_path), "--ckpt", str(ckpt),
                 "--methods", "upsample", "--no-faithfulness", "--out", str(tmp_path / "e"), "--quiet"]) == 0
    results = pd.read_csv(tmp_path / "e" / "results.csv")
    assert set(results["image"]) == {f"patient{64541 + k}_study1_view1_frontal" for k in range(3)}
    assert set(results["finding"]) == {"Atelectasis", "Airspace Opacity"}
