"""Bootstrap intervals over images: coverage on a known distribution, resampling images not rows, and the paired
differences of the summary."""

import numpy as np
import pytest

from protomdm.evaluation.bootstrap import bootstrap_interval, paired_difference_interval
from protomdm.evaluation.results import results_frame
from protomdm.evaluation.tables import paired_differences, summarise


def test_the_95_percent_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    trials, covered = 400, 0
    for t in range(trials):
        sample = rng.exponential(2.0, size=60)  # skewed, true mean 2
        low, high = bootstrap_interval(sample, replicates=500, seed=t)
        covered += low <= 2.0 <= high
    # binomial(400, 0.95): 380 +- 4.4; a percentile interval of n = 60 exponential means under-covers slightly
    assert 0.90 <= covered / trials <= 0.98


def test_rows_of_one_image_are_resampled_together():
    # two images, each with many identical rows: resampling images can only give the two image means or their mix
    values = [0.0] * 50 + [1.0] * 50
    groups = ["a"] * 50 + ["b"] * 50
    low, high = bootstrap_interval(values, groups, seed=0)
    assert (low, high) == (0.0, 1.0)
    # the same values as 100 independent rows give a narrow interval around 0.5
    low, high = bootstrap_interval(values, seed=0)
    assert 0.35 < low < 0.5 < high < 0.65


def test_nan_values_are_left_out_and_no_values_give_nan():
    assert bootstrap_interval([1.0, np.nan, 1.0]) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_interval([np.nan])))


def test_paired_difference_of_a_constant_shift_is_that_shift():
    rng = np.random.default_rng(0)
    a = rng.random(30)
    mean, low, high = paired_difference_interval(a + 0.25, a)
    assert mean == pytest.approx(0.25) and low == pytest.approx(0.25) and high == pytest.approx(0.25)


def _rows(method, values, metric="dice", p="90"):
    return [dict(image=f"i{k}", finding="Mass", prototype="0", method=method, percentile=p, metric=metric,
                 value=str(v)) for k, v in enumerate(values)]


def test_summary_carries_intervals_and_the_paired_differences_by_hand():
    mdm, ups = [0.5, 0.7, 0.9, 0.6], [0.4, 0.4, 0.8, 0.6]
    frame = results_frame(_rows("mdm", mdm) + _rows("upsample", ups)
                          + _rows("mdm", [1, 0, 1, 1], "pointing_game", "") + _rows("upsample", [0, 0, 1, 1],
                                                                                    "pointing_game", ""))
    s = summarise(frame).set_index(["method", "metric"])
    low, high = s.loc[("mdm", "dice"), ["ci_low", "ci_high"]]
    assert 0.5 <= low < np.mean(mdm) < high <= 0.9
    d = paired_differences(frame, 90.0).set_index(["versus", "metric"])
    assert d.loc[("upsample", "dice"), "difference"] == pytest.approx(np.mean(np.subtract(mdm, ups)))
    assert d.loc[("upsample", "pointing_game"), "difference"] == pytest.approx(0.25)
    assert d.loc[("upsample", "dice"), "n"] == 4
    assert d.loc[("upsample", "dice"), "ci_low"] >= 0.0  # mdm never below upsample here
    assert paired_differences(frame[frame["method"] == "upsample"], 90.0).empty
