"""The evaluation's results as typed pandas DataFrames, read from (and matching) the CSV files the runner writes.

``results.csv`` holds one row per (image, finding, prototype, method, percentile, metric); in the frame
``percentile`` is a float (NaN for percentile-free metrics), ``value`` a float (NaN for the CUB part rows), and the
part rows' hit patterns are tuples of bools in ``parts`` (``"0101"`` on disk). ``curves.csv`` holds the
deletion/insertion curves; in the frame ``values`` is a float array. ``timings.csv`` holds the seconds of each
localization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..files import read_csv

COLUMNS = ("image", "finding", "prototype", "method", "percentile", "metric", "value")
CURVE_COLUMNS = ("image", "finding", "prototype", "method", "curve", "values")
TIMING_COLUMNS = ("image", "finding", "prototype", "method", "seconds")
PART_METRICS = ("part_hits", "part_visible", "part_hits_noisy")  # one bit per part, in the CSV's value


def results_frame(rows: Iterable[dict[str, str]]) -> pd.DataFrame:
    """The typed frame of ``results.csv`` rows (dicts of strings, as :func:`csv.DictReader` gives them)."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS), dtype=str)
    part = frame["metric"].isin(PART_METRICS)
    return frame.assign(
        prototype=pd.to_numeric(frame["prototype"]).astype("int64"),
        percentile=pd.to_numeric(frame["percentile"].replace("", np.nan)).astype(float),
        value=pd.to_numeric(frame["value"].where(~part, np.nan)).astype(float),
        parts=[tuple(c == "1" for c in v) if p else None for v, p in zip(frame["value"], part)],
    )


def read_results(path: str | Path) -> pd.DataFrame:
    """The typed frame of a ``results.csv`` (or of an evaluation folder holding one)."""
    path = Path(path)
    path = path / "results.csv" if path.is_dir() else path
    return results_frame(read_csv(path))


def read_curves(path: str | Path) -> pd.DataFrame:
    """The frame of a ``curves.csv`` (or of an evaluation folder holding one): ``values`` as float arrays."""
    path = Path(path)
    path = path / "curves.csv" if path.is_dir() else path
    frame = pd.DataFrame(read_csv(path), columns=list(CURVE_COLUMNS), dtype=str)
    if frame.empty:
        return frame
    return frame.assign(prototype=frame["prototype"].astype("int64"),
                        values=[np.array(v.split(), float) for v in frame["values"]])


def read_timings(path: str | Path) -> pd.DataFrame:
    """The frame of a ``timings.csv`` (or of an evaluation folder holding one): the localizer's seconds per
    localization (its search's wall time shared among the localizations it made); empty if there is none."""
    path = Path(path)
    path = path / "timings.csv" if path.is_dir() else path
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=float if c == "seconds" else str) for c in TIMING_COLUMNS})
    frame = pd.DataFrame(read_csv(path), columns=list(TIMING_COLUMNS), dtype=str)
    return frame.assign(seconds=pd.to_numeric(frame["seconds"]).astype(float))


def format_percentile(p: float) -> str:
    """A percentile as the CSV files write it: ``"90"``, ``"97.5"``, or ``""`` for none (NaN)."""
    return "" if pd.isna(p) else f"{float(p):g}"
