"""Scoring localization against ground truth: pure metrics, faithfulness, the runner behind ``protomdm evaluate``,
and its results as typed DataFrames."""

from .results import read_curves, read_results, read_timings
from .runner import EvalResult, EvalSettings, evaluate
from .tables import markdown_tables, summarise

__all__ = ["EvalResult", "EvalSettings", "evaluate", "markdown_tables", "read_curves", "read_results", "read_timings", "summarise"]
