"""Every region of a localization, not one box around all of them."""

import json

import numpy as np
import pytest
import torch
from oracles import BoxOracle, oracle_image

from protomdm import LogitSelector, MDMLocalizer
from protomdm.evaluation.metrics import box_iobb, region_hit_rate
from protomdm.geometry import box_iou, regions

LEFT, RIGHT = (6, 10, 22, 26), (40, 36, 58, 54)


def two_box_oracle(*boxes):
    model = BoxOracle(boxes[0])
    with torch.no_grad():
        for x0, y0, x1, y1 in boxes[1:]:
            model.region[..., y0:y1, x0:x1] = 1
    return model


def test_regions_by_hand():
    h = np.zeros((20, 20))
    h[2:5, 2:5] = 1.0  # 9 pixels of 1: mass 9
    h[12:18, 10:16] = 0.5  # 36 pixels of 0.5: mass 18, so it comes first
    found = regions(h, 80)
    assert [r.box for r in found] == [(10, 12, 16, 18), (2, 2, 5, 5)]
    assert [r.area for r in found] == [36, 9] and found[1].peak == 1.0 and found[0].mean == 0.5
    assert regions(np.zeros((5, 5)), 90) == []  # a flat map has no region
    diagonal = np.zeros((6, 6))
    diagonal[1, 1] = diagonal[2, 2] = 1.0  # touching corners: one region (8-connectivity)
    assert len(regions(diagonal, 90)) == 1


def test_region_hit_rate_by_hand():
    truth = [(0, 0, 10, 10), (20, 20, 30, 30)]
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert region_hit_rate([(5, 0, 15, 10)], truth, 0.3) == 0.5  # IoU 1/3 hits the first box only
    assert region_hit_rate([(5, 0, 15, 10)], truth, 0.4) == 0.0
    assert region_hit_rate([(0, 0, 10, 10), (21, 21, 30, 30)], truth, 0.3) == 1.0
    assert np.isnan(region_hit_rate([], [], 0.1))


def test_wang_et_al_accuracy_at_t_iou_and_t_iobb_by_hand():
    """A small found box inside a large truth box: IoU is small, IoBB (over the found box's area) is 1; a large
    found box around a small truth box: both small."""
    truth = [(0, 0, 20, 20)]  # 400 pixels
    inside = [(5, 5, 10, 10)]  # 25 pixels, all inside: IoU 25/400, IoBB 1
    assert box_iobb(inside[0], truth[0]) == 1.0 and box_iou(inside[0], truth[0]) == pytest.approx(0.0625)
    assert [region_hit_rate(inside, truth, t, "iou") for t in (0.05, 0.1)] == [1.0, 0.0]
    assert all(region_hit_rate(inside, truth, t, "iobb") == 1.0 for t in (0.1, 0.4, 0.7))
    around = [(0, 0, 40, 20)]  # 800 pixels, half over the truth: IoU 400/800, IoBB 400/800
    assert box_iobb(around[0], truth[0]) == 0.5 and box_iou(around[0], truth[0]) == 0.5
    assert [region_hit_rate(around, truth, t, "iobb") for t in (0.5, 0.6)] == [1.0, 0.0]
    apart = [(30, 30, 40, 40)]
    assert box_iobb(apart[0], truth[0]) == 0.0 and box_iobb((3, 3, 3, 9), truth[0]) == 0.0  # an empty box
    # two truth boxes, one found inside the first: half of them localized at any T(IoBB)
    assert region_hit_rate(inside, truth + [(50, 50, 60, 60)], 0.7, "iobb") == 0.5


def test_accuracy_tables_with_wangs_figures_on_nih():
    from protomdm.evaluation.tables import WANG_2017, _accuracy_tables

    get = {("mdm", f, 90.0, f"region_hit_{o}{t:g}"): 0.5 for f in ("all", "Mass") for o in ("iou", "iobb")
           for t in (0.1, 0.2)}
    text = "\n".join(_accuracy_tables(get, ["mdm"], ["Mass"], "nih"))
    assert "| method | T(IoU) 0.1 | T(IoU) 0.2 | T(IoBB) 0.1 | T(IoBB) 0.2 |" in text
    assert f"| Mass | Wang et al. 2017 | {WANG_2017[0.1]['Mass']:.2f} | - |" in text
    assert "Wang et al." not in "\n".join(_accuracy_tables(get, ["mdm"], ["Mass"], "synthetic")).split("(Wang")[1]


@pytest.fixture(scope="module")
def two_objects():
    return MDMLocalizer(steps=300).localize(oracle_image(), LogitSelector(two_box_oracle(LEFT, RIGHT), 0))


def test_two_planted_objects_give_two_regions_each_on_its_object(two_objects):
    found = two_objects.regions(90)
    assert len(found) == 2
    for r in found:
        best = max(box_iou(r.box, LEFT), box_iou(r.box, RIGHT))
        assert best >= 0.3, (r.box, best)
    assert {max((LEFT, RIGHT), key=lambda b: box_iou(r.box, b)) for r in found} == {LEFT, RIGHT}
    union = two_objects.box(90)  # the single box spans both, which is what regions fix
    assert box_iou(union, LEFT) < 0.3 and box_iou(union, RIGHT) < 0.3


def test_one_object_gives_one_region():
    loc = MDMLocalizer(steps=300).localize(oracle_image(), LogitSelector(BoxOracle(RIGHT), 0))
    found = loc.regions(90)
    assert len(found) == 1 and box_iou(found[0].box, RIGHT) >= 0.5


def test_localize_writes_every_region_to_the_json(tmp_path, png_path):
    from conftest import tiny_model

    from protomdm.cli import main
    from protomdm.models import save_checkpoint

    ckpt = save_checkpoint(tiny_model("protopnet"), tmp_path / "m.pt")
    out = tmp_path / "out"
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(png_path), "--method", "upsample", "--out",
                 str(out), "--quiet"]) in (0, 1)
    rec = json.loads((out / "scan_localization.json").read_text())
    assert isinstance(rec["regions"], list)
    for r in rec["regions"]:  # boxes in the original image's pixels (90 x 70), the input's beside them
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 70 and r["area"] > 0 and len(r["box_input"]) == 4
    if rec["status"] == "ok":
        assert rec["regions"]
