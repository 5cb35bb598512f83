"""Evaluation results as typed DataFrames: the CSV round trip, and the summary's means computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from protomdm.evaluation.results import COLUMNS, format_percentile, read_results, results_frame
from protomdm.evaluation.tables import markdown_tables, summarise
from protomdm.files import write_csv


def _row(image, finding, proto, method, p, metric, value):
    return dict(image=image, finding=finding, prototype=str(proto), method=method, percentile=p, metric=metric,
                value=value)


ROWS = [
    _row("a", "Mass", 0, "mdm", "90", "dice", "0.5"),
    _row("b", "Mass", 0, "mdm", "90", "dice", "0.25"),
    _row("a", "Nodule", 1, "mdm", "90", "dice", "1"),
    _row("a", "Mass", 0, "mdm", "", "pointing_game", "1"),
    _row("a", "Mass", 0, "mdm", "", "score", "2"),
    _row("a", "Mass", 0, "mdm", "", "score_heatmap_masked", "1"),  # drop 50%
    _row("a", "Nodule", 1, "mdm", "", "score", "4"),
    _row("a", "Nodule", 1, "mdm", "", "score_heatmap_masked", "5"),  # an increase
    _row("a", "Mass", 0, "upsample", "90", "dice", "0.125"),
]


def test_the_frame_is_typed():
    f = results_frame(ROWS + [_row("c", "bird", 3, "mdm", "90", "part_hits", "0101")])
    assert f["percentile"].dtype == float and math.isnan(f.loc[3, "percentile"]) and f.loc[0, "percentile"] == 90
    assert f["value"].dtype == float and f["prototype"].dtype == "int64"
    assert f.iloc[-1]["parts"] == (False, True, False, True) and math.isnan(f.iloc[-1]["value"])
    assert f.loc[0, "parts"] is None
    assert format_percentile(np.nan) == "" and format_percentile(97.5) == "97.5" and format_percentile(90.0) == "90"


def test_csv_round_trip(tmp_path):
    write_csv(tmp_path / "results.csv", COLUMNS, ROWS)
    pd.testing.assert_frame_equal(read_results(tmp_path), results_frame(ROWS))


def test_summary_by_hand():
    s = summarise(results_frame(ROWS), by_finding=True)
    get = lambda m, f, p, k: s[(s.method == m) & (s.finding == f) & (s.metric == k) & (  # noqa: E731
        s.percentile.isna() if p is None else s.percentile == p)].iloc[0]
    assert get("mdm", "all", 90, "dice").value == pytest.approx((0.5 + 0.25 + 1) / 3) and get("mdm", "all", 90, "dice").n == 3
    assert get("mdm", "Mass", 90, "dice").value == pytest.approx(0.375)
    assert get("upsample", "all", 90, "dice").value == 0.125
    assert get("mdm", "all", None, "average_drop").value == pytest.approx(100 * (0.5 + 0) / 2)
    assert get("mdm", "all", None, "average_increase").value == pytest.approx(50.0)
    assert get("mdm", "Nodule", None, "average_drop").value == 0.0
    assert not (s.metric == "score").any()  # the pairs are folded into Average Drop / Increase
    md = markdown_tables(s, "nih", 2, 1, ["mdm", "upsample"])
    assert "| mdm | 0.583 |" in md and "| upsample | 0.125 |" in md and "| Mass | mdm | 0.375 |" in md
    assert md.index("| mdm |") < md.index("| upsample |")


def test_timings_give_mean_seconds_per_method():
    timings = pd.DataFrame({"image": ["a", "b", "a"], "finding": ["Mass"] * 3, "prototype": ["0"] * 3,
                            "method": ["mdm", "mdm", "rise"], "seconds": [2.0, 4.0, 0.5]})
    s = summarise(results_frame(ROWS), timings=timings).query("metric == 'seconds'").set_index("method")
    assert s.loc["mdm", "value"] == 3.0 and s.loc["mdm", "n"] == 2 and s.loc["rise", "value"] == 0.5
