"""CheXlocalize as a dataset source, on a miniature copy in the download's layout: CheXpert/val images and labels,
CheXlocalize/gt_segmentations_val.json of COCO RLE masks (encoded here with pycocotools, as its authors did)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from test_chest_tables import CHEXPERT_HEADER
from test_table import model_cfg, png

from protomdm.cli import main
from protomdm.data import dataset_source
from protomdm.data.chexlocalize import LOCALIZATION_TASKS, image_id, task_name
from protomdm.data.config import DataConfig
from protomdm.data.sources import EvalOptions


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


# --- scoring as CheXlocalize scores, its formats out, and maps made elsewhere in ---------------------------------

def textured_copy(root, h=60, w=80):
    """:func:`chexlocalize_copy` with noise images (a flat image gives a flat heatmap, which scores nothing) of a
    size other than the model's, so that scoring at the image's size differs from scoring at the model's."""
    from PIL import Image

    boxes = chexlocalize_copy(root, h=h, w=w)
    rng = np.random.default_rng(0)
    for p in (root / "CheXpert" / "val").rglob("*.jpg"):
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(p)
    return boxes


def tiny_model(tmp_path):
    ckpt = tmp_path / "m.pt"
    assert main(["init-model", "--model", "xprotonet", "--backbone", "tiny", "--classes", "Atelectasis,Lung Opacity",
                 "--prototypes-per-class", "1", "--img-size", "32", "--grey", "--out", str(ckpt)]) == 0
    return ckpt


def evaluate_cli(root, ckpt, out, *extra):
    return main(["evaluate", "--dataset", "chexlocalize", "--root", str(root), "--ckpt", str(ckpt),
                 "--no-faithfulness", "--out", str(out), "--quiet", *extra])


def chexlocalize_maps(pkl_path):
    """A map pickle read and brought to its image's size the way CheXlocalize's eval.py does (pickle with torch,
    F.interpolate bilinear to cxr_dims reversed, align_corners=False)."""
    import pickle

    import torch.nn.functional as F

    with open(pkl_path, "rb") as f:
        info = pickle.load(f)
    w, h = info["cxr_dims"]
    return info, F.interpolate(info["map"], size=(h, w), mode="bilinear", align_corners=False).squeeze().numpy()


def chexlocalize_iou(pred, gt):
    """eval.py's calculate_iou with true_pos_only (its default): NaN when either mask is empty."""
    if pred.sum() == 0 or gt.sum() == 0:
        return float("nan")
    return np.logical_and(pred, gt).sum() / np.logical_or(pred, gt).sum()


def test_export_is_scored_by_chexlocalize_s_protocol_to_protomdm_s_own_numbers(tmp_path, capsys):
    import pandas as pd

    textured_copy(tmp_path)
    gt = json.loads((tmp_path / "CheXlocalize" / "gt_segmentations_val.json").read_text())
    assert evaluate_cli(tmp_path, tiny_model(tmp_path), tmp_path / "e", "--methods", "upsample,mdm", "--steps", "40",
                        "--export", "chexlocalize") == 0
    results = pd.read_csv(tmp_path / "e" / "results.csv")
    for method in ("upsample", "mdm"):
        folder = tmp_path / "e" / "chexlocalize" / method
        pred = json.loads((folder / "segmentations.json").read_text())
        assert set(pred) == set(gt)
        rows = results[results["method"] == method]
        scored = 0
        for cxr_id, tasks in gt.items():
            assert list(pred[cxr_id]) == list(LOCALIZATION_TASKS)  # every image x all 10 tasks
            for task, item in tasks.items():
                truth = coco_mask.decode(item).astype(bool)
                mask = coco_mask.decode(pred[cxr_id][task]).astype(bool)
                assert mask.shape == truth.shape == (60, 80)
                mine = rows[(rows["image"] == cxr_id) & (rows["finding"] == task)]
                if not truth.any():  # no localization: the export's mask is all zero
                    assert not mask.any() and mine.empty
                    continue
                iou = mine[(mine["metric"] == "iou") & (mine["percentile"] == 90)]["value"].item()
                if mask.any():
                    assert chexlocalize_iou(mask, truth) == pytest.approx(iou, abs=1e-6)
                else:  # an empty map: eval.py leaves it out (true_pos_only), protomdm counts it a miss
                    assert np.isnan(chexlocalize_iou(mask, truth)) and iou == 0
                info, heat = chexlocalize_maps(folder / "maps" / f"{cxr_id}_{task}_map.pkl")
                assert info["task"] == task and info["gt"] == 1 and info["cxr_dims"] == (80, 60)
                assert tuple(info["map"].shape) == (1, 1, 32, 32) and 0 <= info["prob"] <= 1
                assert tuple(info["cxr_img"].shape) == (1, 32, 32)
                y, x = np.unravel_index(np.argmax(heat, axis=None), heat.shape)
                assert float(truth[y, x]) == mine[mine["metric"] == "hit"]["value"].item()
                scored += 1
        assert scored == 4  # 3 Atelectasis + 1 Airspace Opacity
    summary = (tmp_path / "e" / "summary.md").read_text()
    assert "mean IoU (p90) and hit rate per finding, 95% bootstrap intervals" in summary
    assert "mdm minus each other method" in summary


def test_chexlocalize_s_own_evaluator_agrees_image_for_image(tmp_path):
    """CheXlocalize's eval.py (get_ious, get_hitrates) run on the export, where a checkout of
    github.com/rajpurkarlab/cheXlocalize is named by PROTOMDM_CHEXLOCALIZE_REPO."""
    import importlib
    import os
    import sys
    import types

    import pandas as pd

    repo = os.environ.get("PROTOMDM_CHEXLOCALIZE_REPO")
    if not repo or not (Path(repo) / "eval.py").is_file():
        pytest.skip("CheXlocalize reference absent: set PROTOMDM_CHEXLOCALIZE_REPO to a checkout of "
                    "github.com/rajpurkarlab/cheXlocalize")
    for name in ("statsmodels", "statsmodels.formula", "statsmodels.formula.api"):  # its utils' regression helpers
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, repo)
    try:
        ev = importlib.import_module("eval")
    finally:
        sys.path.remove(repo)
    textured_copy(tmp_path)
    assert evaluate_cli(tmp_path, tiny_model(tmp_path), tmp_path / "e", "--methods", "upsample",
                        "--export", "chexlocalize") == 0
    gt_path = tmp_path / "CheXlocalize" / "gt_segmentations_val.json"
    folder = tmp_path / "e" / "chexlocalize" / "upsample"
    ious, ids = ev.get_ious(str(gt_path), str(folder / "segmentations.json"), True)
    hits, _ = ev.get_hitrates(str(gt_path), str(folder / "maps"))
    results = pd.read_csv(tmp_path / "e" / "results.csv")
    compared = 0
    for r in results[results["metric"].isin(["iou", "hit"])].itertuples():
        if r.metric == "iou" and r.percentile == 90:
            theirs = ious[r.finding][ids.index(r.image)]
            assert theirs == pytest.approx(r.value, abs=1e-6) or (np.isnan(theirs) and r.value == 0)
        elif r.metric == "hit":
            assert hits.loc[r.image, r.finding] == r.value
        else:
            continue
        compared += 1
    assert compared == 8


def test_a_segmentation_of_another_size_is_one_line_and_exit_2(tmp_path, capsys):
    chexlocalize_copy(tmp_path)
    path = tmp_path / "CheXlocalize" / "gt_segmentations_val.json"
    gt = json.loads(path.read_text())
    gt["patient64542_study1_view1_frontal"]["Atelectasis"] = rle(np.ones((31, 40), bool))
    path.write_text(json.dumps(gt))
    assert evaluate_cli(tmp_path, tiny_model(tmp_path), tmp_path / "e", "--methods", "upsample") == 2
    err = capsys.readouterr().err
    assert "patient64542_study1_view1_frontal: its Atelectasis segmentation is 40x31, its image 40x30" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e" / "results.csv").exists()


def test_an_id_without_its_image_is_one_line_and_exit_2(tmp_path, capsys):
    chexlocalize_copy(tmp_path)
    (tmp_path / "CheXpert" / "val" / "patient64543" / "study1" / "view1_frontal.jpg").unlink()
    assert evaluate_cli(tmp_path, tiny_model(tmp_path), tmp_path / "e", "--methods", "upsample") == 2
    err = capsys.readouterr().err
    assert "1 image id(s) of gt_segmentations_val.json have no image" in err and "patient64543" in err
    assert len(err.strip().splitlines()) == 1


def test_export_needs_the_chexlocalize_dataset(tmp_path, capsys):
    assert main(["evaluate", "--dataset", "synthetic", "--ckpt", str(tiny_model(tmp_path)), "--limit", "1",
                 "--export", "chexlocalize", "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert "needs the chexlocalize dataset" in capsys.readouterr().err


def write_pickled_map(path, heat, task, dims):
    """A map pickle as CheXlocalize's own scripts write them: ``pickle.dump`` of a dict of tensors."""
    import pickle

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"map": torch.from_numpy(heat.astype(np.float32))[None, None], "prob": 0.7, "task": task,
                     "gt": 1, "cxr_img": torch.zeros(3, *heat.shape), "cxr_dims": dims}, f)


def test_maps_made_elsewhere_are_scored_as_method_maps(tmp_path):
    import pandas as pd

    from protomdm.evaluation.metrics import iou, top_percentile_mask
    from protomdm.geometry import resize_heatmap

    boxes = textured_copy(tmp_path)
    maps, expected = tmp_path / "gradcam_maps_val", {}
    for k, (cxr_id, box) in enumerate(sorted(boxes.items())):
        heat = np.random.default_rng(k).random((20, 20)) * 0.1
        ys, xs = np.nonzero(box)  # the map's 20 x 20 cells that lie wholly inside the evidence box
        heat[-(-ys.min() // 3):(ys.max() + 1) // 3, -(-xs.min() // 4):(xs.max() + 1) // 4] += 1
        if k < 2:  # CheXlocalize's pickles, and a .npy in a subfolder
            write_pickled_map(maps / f"{cxr_id}_Atelectasis_map.pkl", heat, "Atelectasis", (80, 60))
        else:
            (maps / "npy").mkdir()
            np.save(maps / "npy" / f"{cxr_id}_Atelectasis_map.npy", heat)
        expected[cxr_id] = float(iou(top_percentile_mask(resize_heatmap(heat, (60, 80)), 90), box))
    assert evaluate_cli(tmp_path, tiny_model(tmp_path), tmp_path / "e", "--maps", str(maps)) == 0
    results = pd.read_csv(tmp_path / "e" / "results.csv")
    assert set(results["method"]) == {"maps"} and set(results["prototype"]) == {-1}
    for cxr_id, value in expected.items():
        rows = results[(results["image"] == cxr_id) & (results["finding"] == "Atelectasis")]
        assert rows[(rows["metric"] == "iou") & (rows["percentile"] == 90)]["value"].item() == pytest.approx(value,
                                                                                                         abs=1e-5)
        assert rows[rows["metric"] == "hit"]["value"].item() == 1.0
    skipped = (tmp_path / "e" / "skipped.txt").read_text()  # the one Airspace Opacity has no map
    assert "no map of Airspace Opacity (patient64541_study1_view1_frontal_Airspace Opacity_map.pkl" in skipped


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, capsys):
    import pickle

    boxes = textured_copy(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    maps = tmp_path / "maps"
    maps.mkdir()
    with open(maps / f"{sorted(boxes)[0]}_Atelectasis_map.pkl", "wb") as f:
        pickle.dump({"map": Payload()}, f)
    assert evaluate_cli(tmp_path, tiny_model(tmp_path), tmp_path / "e", "--maps", str(maps)) == 2
    err = capsys.readouterr().err
    assert "is not a heatmap pickle in CheXlocalize's layout (it asks to load" in err
    assert len(err.strip().splitlines()) == 1 and not marker.exists()


def test_maps_named_otherwise_are_one_line_naming_the_expected_name(tmp_path, capsys):
    textured_copy(tmp_path)
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "image1_Atelectasis_map.npy", np.ones((4, 4)))
    assert evaluate_cli(tmp_path, tiny_model(tmp_path), tmp_path / "e", "--maps", str(tmp_path / "maps")) == 2
    err = capsys.readouterr().err
    assert "no map in" in err and "patient64541_study1_view1_frontal_" in err and "image1_Atelectasis_map.npy" in err
