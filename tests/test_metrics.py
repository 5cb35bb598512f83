import numpy as np
import pytest

from protomdm.evaluation.metrics import (box_mask, dice, iou, localisation_scores, mask_box, ppv, sensitivity,
                                         top_percentile_mask)


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


def test_localisation_scores_per_percentile():
    h = np.zeros((10, 10))
    h[:5, :5] = np.arange(25).reshape(5, 5) + 1
    truth = box_mask((0, 0, 5, 5), (10, 10))
    s = localisation_scores(h, truth, [75, 90])
    assert s["ppv"].tolist() == [1.0, 1.0]
    assert s["sensitivity"].tolist() == pytest.approx([25 / 25, 10 / 25])


def test_mask_box_exclusive_ends():
    m = box_mask((2, 1, 5, 3), (6, 8))
    assert mask_box(m) == (2, 1, 5, 3)
    assert mask_box(np.zeros((3, 3), bool)) is None
