import numpy as np
import pytest

from protomdm.evaluation.metrics import (
    box_mask,
    dice,
    iou,
    localization_scores,
    mask_box,
    ppv,
    sensitivity,
    top_percentile_mask,
)


def test_top_percentile_mask_keeps_the_top_share():
    h = np.arange(100, dtype=float).reshape(10, 10)
    m = top_percentile_mask(h, 90)
    assert m.sum() == 10 and m[9].all()
    ms = top_percentile_mask(h, [50, 90])
    assert ms.shape == (2, 10, 10) and ms[0].sum() == 50 and np.array_equal(ms[1], m)


def test_top_percentile_mask_ties_and_plateaus():
    h = np.zeros((4, 4))
    h[0, :2] = 1.0  # 2 of 16 pixels non-zero: the zero plateau is never "top"
    assert top_percentile_mask(h, 50).sum() == 2
    h2 = np.array([[1.0, 2.0], [2.0, 2.0]])  # threshold lands on the tied value 2: all ties are kept
    assert top_percentile_mask(h2, 80).sum() == 3
    assert top_percentile_mask(np.ones((3, 3)), 90).sum() == 0  # a constant map says nothing about where
    with pytest.raises(ValueError):
        top_percentile_mask(h, 100)


def test_hand_computed_metrics():
    truth = box_mask((0, 0, 2, 2), (4, 4))  # 4 pixels
    pred = box_mask((1, 0, 3, 2), (4, 4))  # 4 pixels, 2 overlap
    assert dice(pred, truth) == pytest.approx(2 * 2 / (4 + 4))
    assert iou(pred, truth) == pytest.approx(2 / 6)
    assert ppv(pred, truth) == pytest.approx(0.5) and sensitivity(pred, truth) == pytest.approx(0.5)
    empty = np.zeros((4, 4), bool)
    assert dice(empty, truth) == 0 and sensitivity(empty, truth) == 0 and ppv(empty, truth) == 1.0
    assert dice(empty, empty) == 1.0
    full = np.ones((4, 4), bool)
    assert ppv(full, truth) == pytest.approx(4 / 16) and sensitivity(full, truth) == 1.0


def test_localization_scores_per_percentile():
    h = np.zeros((10, 10))
    h[:5, :5] = np.arange(25).reshape(5, 5) + 1
    truth = box_mask((0, 0, 5, 5), (10, 10))
    s = localization_scores(h, truth, [75, 90])
    assert s["ppv"].tolist() == [1.0, 1.0]
    assert s["sensitivity"].tolist() == pytest.approx([25 / 25, 10 / 25])


def test_mask_box_exclusive_ends():
    m = box_mask((2, 1, 5, 3), (6, 8))
    assert mask_box(m) == (2, 1, 5, 3)
    assert mask_box(np.zeros((3, 3), bool)) is None


def test_mask_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth = rng.random((16, 20)) < 0.3
        heat = rng.random((16, 20))
        masks = top_percentile_mask(heat, [70, 90])
        for m in masks:
            y, p = truth.ravel(), m.ravel()
            assert dice(m, truth) == pytest.approx(sk.f1_score(y, p))
            assert iou(m, truth) == pytest.approx(sk.jaccard_score(y, p))
            assert ppv(m, truth) == pytest.approx(sk.precision_score(y, p))
            assert sensitivity(m, truth) == pytest.approx(sk.recall_score(y, p))
        np.testing.assert_allclose(dice(masks, truth), [sk.f1_score(truth.ravel(), m.ravel()) for m in masks])


def test_pointing_game():
    from protomdm.evaluation.metrics import pointing_game

    truth = box_mask((4, 4, 6, 6), (10, 10))
    h = np.zeros((10, 10))
    h[5, 5] = 1
    assert pointing_game(h, truth)
    h[5, 5], h[0, 9] = 0.5, 1  # maximum far from the box
    assert not pointing_game(h, truth) and not pointing_game(h, truth, tolerance=3)
    h[0, 9], h[2, 7] = 0, 1  # 2 px from the box (Chebyshev: 2 rows above, 2 columns right)
    assert not pointing_game(h, truth, tolerance=1) and pointing_game(h, truth, tolerance=2)
    assert not pointing_game(h, np.zeros((10, 10), bool), tolerance=20)


def test_average_drop_and_increase_by_hand():
    from protomdm.evaluation.metrics import average_drop, average_increase

    full = np.array([1.0, 2.0, 4.0, 0.0])
    masked = np.array([0.5, 3.0, 1.0, 5.0])  # drops 50%, 0% (increase), 75%; the last has no evidence: left out
    assert average_drop(full, masked) == pytest.approx(100 * (0.5 + 0 + 0.75) / 3)
    assert average_increase(full, masked) == pytest.approx(100 * 2 / 4)


def test_curve_auc_and_deletion_insertion_by_hand():
    import torch

    from protomdm.evaluation.faithfulness import deletion_insertion, heatmap_masked_scores
    from protomdm.evaluation.metrics import curve_auc

    assert curve_auc(np.linspace(1, 0, 11)) == pytest.approx(0.5)
    assert curve_auc(np.ones(3)) == pytest.approx(1.0)
    x = torch.zeros(1, 4, 4)
    x[0, :2, :2] = 1.0  # evidence: the top-left 2x2 block
    score = lambda t: t.sum((1, 2, 3))  # noqa: E731
    good = np.zeros((4, 4))
    good[:2, :2] = 1
    dele, ins = deletion_insertion(score, x, good, steps=4)  # 4 pixels per step, the block first
    np.testing.assert_allclose(dele, [4, 0, 0, 0, 0])
    np.testing.assert_allclose(ins, [0, 4, 4, 4, 4])
    bad = 1 - good
    dele, ins = deletion_insertion(score, x, bad, steps=4)
    np.testing.assert_allclose(dele, [4, 4, 4, 4, 0])
    np.testing.assert_allclose(heatmap_masked_scores(score, x, np.stack([good, bad, good / 2])), [4, 0, 2])


def test_part_hits_consistency_stability_by_hand():
    from protomdm.evaluation.metrics import part_consistency, part_hits, part_stability

    region = box_mask((0, 0, 5, 5), (10, 10))
    parts = np.array([[2, 2, 1], [8, 8, 1], [3, 1, 0]])  # in, out, in-but-invisible
    np.testing.assert_array_equal(part_hits(region, parts), [True, False, False])
    # 2 prototypes x 5 images x 2 parts: prototype 0 covers part 0 in 4 of 5 images, prototype 1 in 3 of 5
    hits = np.zeros((2, 5, 2), bool)
    hits[0, :4, 0] = True
    hits[1, :3, 0] = True
    vis = np.ones((5, 2), bool)
    assert part_consistency(hits, vis, 0.8) == pytest.approx(50.0)
    vis2 = vis.copy()
    vis2[4, 0] = False  # part 0 invisible where prototype 0 missed it: 4 of 4
    assert part_consistency(hits, vis2, 0.8) == pytest.approx(50.0)
    noisy = hits.copy()
    noisy[0, 0, 1] = True  # one image of prototype 0 changes its parts under noise
    assert part_stability(hits, noisy) == pytest.approx(100 * (4 / 5 + 1) / 2)


def test_scores_at_the_objects_own_area_by_hand():
    from protomdm.evaluation.metrics import area_scores

    truth = np.zeros((10, 10), bool)
    truth[0, :3] = True  # 3% of the image
    heat = np.zeros((10, 10))
    heat[0, :5] = [5, 4, 3, 2, 1]  # the top 3 pixels are the object
    assert area_scores(heat, truth) == {"dice_area": 1.0, "iou_area": 1.0}
    heat[0, 2], heat[5, 5] = 0.5, 10  # one pixel of the object drops out, one outside comes in
    found = area_scores(heat, truth)  # the mask: (0,0), (0,1), (5,5); TP 2, FP 1, FN 1
    assert found["dice_area"] == pytest.approx(2 / 3) and found["iou_area"] == pytest.approx(0.5)
    assert area_scores(heat, np.zeros((10, 10), bool)) == {} and area_scores(heat, np.ones((10, 10), bool)) == {}
    # the same object at p90: the top-10% mask holds 10 pixels, so Dice is capped at 2 * 3 / 13
    assert float(dice(top_percentile_mask(np.where(truth, 2.0, np.linspace(0, 1, 100).reshape(10, 10)), 90),
                      truth)) == pytest.approx(6 / 13)


def test_dice_ceiling_is_what_the_best_mask_of_that_size_reaches():
    from protomdm.evaluation.metrics import dice_ceiling

    truth = np.zeros((10, 10), bool)
    truth[0, :3] = True  # 3 pixels; the top-10% mask holds 10
    best = np.where(truth, 2.0, np.linspace(0, 1, 100).reshape(10, 10))  # the object first, then anything
    assert dice_ceiling(truth, 90) == pytest.approx(6 / 13) == float(dice(top_percentile_mask(best, 90), truth))
    big = np.zeros((10, 10), bool)
    big[:4] = True  # 40 pixels: a 10-pixel mask inside it is the best, 2 * 10 / 50
    assert dice_ceiling(big, 90) == pytest.approx(0.4) == float(dice(top_percentile_mask(np.where(big, 2.0 + best, best), 90), big))
    assert dice_ceiling(big, 60) == 1.0 and dice_ceiling(np.zeros((4, 4), bool), 90) == 0.0
