"""Evaluation: NIH box and CUB part/segmentation readers, check-data, the evaluate runner (files, resume, skipped
images, bad rows) and the Grad-CAM family through our Localizer interface."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import NIH_HEADER, nih_copy, shared_data, tiny_model
from oracles import BoxOracle, oracle_image
from PIL import Image

from protomdm import LogitSelector, save_checkpoint
from protomdm.cli import main
from protomdm.data.cub import cub_samples, read_parts
from protomdm.data.groundtruth import Skipped
from protomdm.data.nih import nih_samples, read_boxes
from protomdm.errors import UserError
from protomdm.evaluation.metrics import box_mask, iou, top_percentile_mask


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    o = capsys.readouterr()
    return code, o.out + o.err




def test_nih_boxes_in_the_publishers_format(tmp_path):
    root = nih_copy(tmp_path, ["a.png,Infiltrate,512.0,256.0,128.0,64.0\n",
                                "a.png,Mass,0,0,10.5,10.5,,,\n",  # trailing empty columns
                                "b.png,Nodule,1000,1000,100,100\n"])
    boxes = read_boxes(root / "BBox_List_2017.csv")
    assert [b.finding for b in boxes] == ["Infiltration", "Mass", "Nodule"]  # the label list's spelling
    assert boxes[0].line == 2 and boxes[2].line == 4
    assert boxes[0].scaled((224, 224)) == (112, 56, 140, 70)  # 512*224/1024 = 112, (512+128)*0.21875 = 140
    assert boxes[1].scaled((224, 224)) == (0, 0, 3, 3)  # rounded outwards
    assert boxes[2].scaled((224, 224)) == (218, 218, 224, 224)  # clipped to the image
    (root / "BBox_List_2017.csv").write_text(NIH_HEADER + "a.png,Mass,1,2,3,4\na.png,Mass,1,2,x,4\n")
    with pytest.raises(UserError, match="line 3"):
        read_boxes(root / "BBox_List_2017.csv")
    (root / "BBox_List_2017.csv").write_text(NIH_HEADER + "a.png,Mass,1,2,3\n")
    with pytest.raises(UserError, match="line 2: expected 6 values"):
        read_boxes(root / "BBox_List_2017.csv")


def test_nih_box_list_as_published():
    boxes = read_boxes(shared_data("nih-sample") / "BBox_List_2017.csv")
    assert len(boxes) == 984 and len({b.image for b in boxes}) == 880
    assert {b.finding for b in boxes} == {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
                                          "Nodule", "Pneumonia", "Pneumothorax"}


def test_nih_samples_skip_missing_images_and_union_boxes(tmp_path):
    root = nih_copy(tmp_path, ["a.png,Mass,0,0,512,512\n", "a.png,Mass,512,512,512,512\n",
                                "gone.png,Nodule,0,0,100,100\n", "b.png,Effusion,0,0,1024,512\n"])
    cfg = tiny_model(class_names=("Mass", "Nodule", "Effusion")).config
    out = list(nih_samples(root, cfg))
    assert isinstance(out[1], Skipped) and "gone.png" in out[1].reason
    a, b = out[0], out[2]
    assert a.pixels.shape == (1, 48, 48) and len(a.findings) == 1 and a.findings[0].truth.sum() == 2 * 24 * 24
    assert b.findings[0].name == "Effusion" and b.findings[0].truth[:24].all() and not b.findings[0].truth[24:].any()


def _cub_copy(tmp_path):
    """A two-image miniature of CUB-200-2011, with segmentations beside it as the second archive unpacks."""
    root = tmp_path / "CUB_200_2011"
    for d in ("images/001.A", "images/002.B", "parts"):
        (root / d).mkdir(parents=True)
    (tmp_path / "segmentations" / "001.A").mkdir(parents=True)
    (root / "classes.txt").write_text("1 001.A\n2 002.B\n")
    (root / "images.txt").write_text("1 001.A/a_1.jpg\n2 002.B/b_2.jpg\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 2\n")
    (root / "train_test_split.txt").write_text("1 0\n2 0\n")
    (root / "bounding_boxes.txt").write_text("1 20.0 10.0 60.0 40.0\n2 0 0 100 80\n")
    (root / "parts" / "parts.txt").write_text("1 beak\n2 tail\n")
    (root / "parts" / "part_locs.txt").write_text("1 1 50.0 30.0 1\n1 2 0.0 0.0 0\n2 1 10 10 1\n2 2 90 70 1\n")
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(root / "images" / "001.A" / "a_1.jpg")
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(root / "images" / "002.B" / "b_2.jpg")
    seg = np.zeros((80, 100), np.uint8)
    seg[10:50, 20:50] = 255  # left 30 of the box's 60 columns
    Image.fromarray(seg).save(tmp_path / "segmentations" / "001.A" / "a_1.png")
    return root


def test_cub_ground_truths_follow_the_crop(tmp_path):
    root = _cub_copy(tmp_path)
    names, locs = read_parts(root)
    assert names == ["beak", "tail"] and locs["1"].tolist() == [[50, 30, 1], [0, 0, 0]]
    cfg = tiny_model(class_names=("001.A", "002.B")).config  # 48x48 input
    seg = list(cub_samples(root, cfg, "segmentation"))
    assert isinstance(seg[1], Skipped)  # image 2 has no segmentation file
    f = seg[0].findings[0]
    assert f.truth[:, :24].all() and not f.truth[:, 24:].any()  # the crop's left half
    np.testing.assert_allclose(f.parts[0], [(50 - 20) * 48 / 60, (30 - 10) * 48 / 40, 1])
    parts = list(cub_samples(root, cfg, "parts", part_half_width=5))
    t = parts[0].findings[0].truth  # a 11 px square around (50, 30) in a 60x40 crop -> about 9x13 input pixels
    ys, xs = np.nonzero(t)
    assert abs(xs.mean() - 24) <= 1 and abs(ys.mean() - 24) <= 1 and 0.02 < t.mean() < 0.1
    assert parts[1].findings[0].class_index == 1
    whole = list(cub_samples(root, cfg, "bbox"))[0].findings[0].truth  # uncropped 100x80: box x 20..80, y 10..50
    ys, xs = np.nonzero(whole)  # -> x 9.6..38.4, y 6..30 of 48x48
    assert xs.min() in (9, 10) and xs.max() in (37, 38) and ys.min() in (5, 6) and ys.max() in (29, 30)
    assert whole.sum() == (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)  # a filled rectangle


def test_cub_reader_on_the_publishers_part_files():
    root = shared_data("cub-sample")
    names, locs = read_parts(root)
    assert len(names) == 15 and len(locs) == 6 and all(v.shape == (15, 3) for v in locs.values())
    classes = tuple(sorted(p.name for p in (root / "images").iterdir()))
    cfg = tiny_model(class_names=classes, img_size=(64, 64)).config
    samples = list(cub_samples(root, cfg, "parts", split="all"))
    assert len(samples) == 6 and all(s.pixels.shape == (3, 64, 64) and s.findings[0].truth.any() for s in samples)


def test_check_data_reports_what_is_missing(capsys, tmp_path):
    root = _cub_copy(tmp_path)
    code, text = _cli(capsys, "check-data", "--dataset", "cub", "--root", root)
    assert code == 0 and "partial" in text and "2 of 11788 rows" in text and "parts.txt: 2 of 15" in text
    (root / "bounding_boxes.txt").unlink()
    (root / "image_class_labels.txt").write_text("1 1\n2\n")
    code, text = _cli(capsys, "check-data", "--dataset", "cub", "--root", root)
    assert code == 1 and "missing  bounding_boxes.txt" in text and "line 2 has 1 fields" in text
    code, text = _cli(capsys, "check-data", "--dataset", "nih", "--root", tmp_path / "nope")
    assert code == 2 and "not a folder" in text


@pytest.fixture
def synth_ckpt(tmp_path):
    model = tiny_model(class_names=("disk", "square", "cross"), img_size=(48, 48))
    return save_checkpoint(model, tmp_path / "synth.pt")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_tables_plots_and_resumes(capsys, tmp_path, synth_ckpt, monkeypatch):
    out = tmp_path / "eval"
    args = ["evaluate", "--dataset", "synthetic", "--ckpt", synth_ckpt, "--limit", 3, "--methods",
            "upsample,mdm,gradcam", "--percentiles", "80,90", "--steps", 10, "--deletion-steps", 4, "--out", out,
            "--quiet"]
    code, text = _cli(capsys, *args)
    assert code == 0 and "| mdm |" in text and "average_drop" in text
    for f in ("results.csv", "curves.csv", "summary.csv", "summary.md", "metrics_vs_percentile.png",
              "deletion_insertion.png"):
        assert (out / f).is_file(), f
    rows = _rows(out / "results.csv")
    # 4 mask metrics and the Dice ceiling x 2 percentiles, Dice and IoU at the object's area, pointing game, Wang et
    # al.'s T(IoU) and T(IoBB) at 0.1..0.7, 4 faithfulness values, empty
    per_unit = 5 * 2 + 2 + 1 + 2 * 7 + 4 + 1
    assert len(rows) == 3 * 3 * per_unit  # 3 single-label images x 3 methods, the first prototype each
    assert {r["percentile"] for r in rows} == {"80", "90", ""}
    summary = _rows(out / "summary.csv")
    dice90 = [float(r["value"]) for r in summary if r["metric"] == "dice" and r["percentile"] == "90"]
    assert len(dice90) == 3 and all(0 <= d <= 1 for d in dice90)
    ceiling = {p: {float(r["value"]) for r in summary if r["metric"] == "dice_ceiling" and r["percentile"] == p}
               for p in ("80", "90")}
    assert all(len(c) == 1 for c in ceiling.values())  # the same objects for every method
    assert ("| ceiling: the best a mask of exactly that size can reach | {:.3f} | {:.3f} |".format(
        *ceiling["80"], *ceiling["90"]) in (out / "summary.md").read_text())

    # interrupt the second image (one image per search), then resume: every (image, method) exactly once
    from protomdm.explain import UpsampleLocalizer

    real, calls = UpsampleLocalizer.compute_maps, []

    def dying(self, x, sel, pairs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x, sel, pairs)

    monkeypatch.setattr(UpsampleLocalizer, "compute_maps", dying)
    code, text = _cli(capsys, *args[:-3], "--out", tmp_path / "again", "--quiet", "--batch-images", 1)
    assert code == 130 and "interrupted" in text
    monkeypatch.setattr(UpsampleLocalizer, "compute_maps", real)
    code, text = _cli(capsys, *args[:-3], "--out", tmp_path / "again", "--quiet", "--batch-images", 1)
    assert code == 2 and "--resume" in text
    code, _ = _cli(capsys, *args[:-3], "--out", tmp_path / "again", "--quiet", "--batch-images", 1, "--resume")
    again = _rows(tmp_path / "again" / "results.csv")
    key = lambda r: (r["image"], r["method"], r["percentile"], r["metric"])  # noqa: E731
    assert code == 0 and sorted(map(key, again)) == sorted(map(key, rows))


def test_several_images_in_one_search_give_the_same_results(capsys, tmp_path, synth_ckpt):
    args = ["evaluate", "--dataset", "synthetic", "--ckpt", synth_ckpt, "--limit", 3, "--methods", "upsample,mdm",
            "--percentiles", "90", "--steps", 8, "--no-faithfulness", "--quiet"]
    assert _cli(capsys, *args, "--out", tmp_path / "one")[0] == 0
    assert _cli(capsys, *args, "--out", tmp_path / "three", "--batch-images", 3)[0] == 0
    one, three = _rows(tmp_path / "one" / "results.csv"), _rows(tmp_path / "three" / "results.csv")
    key = lambda r: (r["image"], r["finding"], r["prototype"], r["method"], r["percentile"], r["metric"])  # noqa: E731
    # per unit: 4 mask metrics and the Dice ceiling, 2 at the object's area, pointing game, T(IoU) and T(IoBB) at
    # 0.1..0.7, empty
    assert sorted(map(key, one)) == sorted(map(key, three)) and len(one) == 3 * 2 * (5 + 2 + 1 + 2 * 7 + 1)
    values = {key(r): float(r["value"]) for r in one}
    assert all(abs(float(r["value"]) - values[key(r)]) < 1e-3 for r in three)


def test_evaluate_nih_reports_skipped_images(capsys, tmp_path):
    root = nih_copy(tmp_path, ["a.png,Mass,0,0,512,512\n", "gone.png,Nodule,0,0,100,100\n"], images=("a.png",))
    model = tiny_model(class_names=("Mass", "Nodule"), in_channels=1, mean=(0.5,), std=(0.25,))
    ckpt = save_checkpoint(model, tmp_path / "nih.pt")
    code, text = _cli(capsys, "evaluate", "--dataset", "nih", "--root", root, "--ckpt", ckpt, "--methods",
                      "upsample", "--no-faithfulness", "--out", tmp_path / "e", "--quiet")
    assert code == 0 and "1 images evaluated, 1 skipped" in text and "gone.png" in (tmp_path / "e" / "skipped.txt").read_text()
    rows = _rows(tmp_path / "e" / "results.csv")
    assert {r["prototype"] for r in rows} <= {"0", "1"} and {r["finding"] for r in rows} == {"Mass"}
    assert "Dice per finding" in (tmp_path / "e" / "summary.md").read_text()
    (root / "BBox_List_2017.csv").write_text(NIH_HEADER + "a.png,Mass,0,0,512\n")
    code, text = _cli(capsys, "evaluate", "--dataset", "nih", "--root", root, "--ckpt", ckpt, "--out",
                      tmp_path / "e2", "--quiet")
    assert code == 2 and "line 2" in text and text.count("\n") == 1


def test_hirescam_finds_the_oracle_box_and_gradcam_runs_on_prototypes():
    pytest.importorskip("pytorch_grad_cam")
    from protomdm import PrototypeSelector
    from protomdm.explain.cam import CAMLocalizer

    box = (8, 40, 24, 56)
    oracle = BoxOracle(box).eval()
    loc = CAMLocalizer("hirescam").localize(oracle_image(), LogitSelector(oracle, 0))
    assert loc.heatmap.shape == (64, 64) and 0 <= loc.heatmap.min() and loc.heatmap.max() <= 1
    assert iou(top_percentile_mask(loc.heatmap, 95), box_mask(box, (64, 64))) > 0.5
    model = tiny_model()
    res = CAMLocalizer("gradcampp").localize_many(torch.rand(2, 3, 48, 48), PrototypeSelector(model, [0, 3]))
    assert len(res) == 2 and len(res[0]) == 2 and res[1][1].heatmap.shape == (48, 48)
    with pytest.raises(UserError, match="unknown CAM method"):
        CAMLocalizer("gradcam++")
