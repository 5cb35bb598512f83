"""Aggregation of the evaluation's long results frame, and its tables in the layout of the MDM paper."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics as M

SUMMARY_COLUMNS = ("method", "finding", "percentile", "metric", "value", "n")
PAIRED = ("score", "score_heatmap_masked")  # Average Drop / Increase's Y and O, per unit
FREE = ("pointing_game", "average_drop", "average_increase", "deletion_auc", "insertion_auc", "part_consistency",
        "part_stability")  # (``seconds`` stays in summary.csv: it differs from run to run, the tables do not)


def summarise(results: pd.DataFrame, by_finding: bool = False, timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """Means of a results frame (:func:`~protomdm.evaluation.results.read_results`) per (method, finding or
    ``"all"``, percentile, metric), with their counts, plus Average Drop and Increase and, from the CUB part rows,
    part consistency and stability; with ``timings`` (:func:`~protomdm.evaluation.results.read_timings`) the mean
    ``seconds`` per localisation. Columns: :data:`SUMMARY_COLUMNS` (``percentile`` NaN where there is none)."""
    frame = results.assign(unit_finding=results["finding"])
    scoped = pd.concat([frame.assign(finding="all")] + ([frame] if by_finding else []), ignore_index=True)
    keys = ["method", "finding", "percentile", "metric"]
    plain = scoped[~scoped["metric"].isin(PAIRED) & scoped["parts"].isna()]
    out = [plain.groupby(keys, dropna=False, sort=False)["value"].agg(value="mean", n="count").reset_index()]
    paired = scoped[scoped["metric"].isin(PAIRED)]
    if not paired.empty:
        wide = paired.pivot_table(index=["method", "finding", "image", "unit_finding", "prototype"], columns="metric",
                                  values="value", aggfunc="first").dropna()
        for (m, f), g in wide.groupby(level=["method", "finding"]):
            y, o = g["score"].to_numpy(), g["score_heatmap_masked"].to_numpy()
            out.append(pd.DataFrame([(m, f, np.nan, "average_drop", M.average_drop(y, o), len(g)),
                                     (m, f, np.nan, "average_increase", M.average_increase(y, o), len(g))],
                                    columns=SUMMARY_COLUMNS))
    if timings is not None and not timings.empty:
        t = timings.groupby("method")["seconds"].agg(value="mean", n="count").reset_index()
        out.append(t.assign(finding="all", percentile=np.nan, metric="seconds"))
    parts = frame[frame["parts"].notna()]
    for m, g in parts.groupby("method", sort=True):
        out.append(_part_summary(m, g))
    summary = pd.concat(out, ignore_index=True)
    return summary.sort_values(["method", "finding", "percentile", "metric"], na_position="first",
                               ignore_index=True)[list(SUMMARY_COLUMNS)]


def _part_summary(method: str, rows: pd.DataFrame) -> pd.DataFrame:
    """Part consistency and (with noisy rows) stability of one method, averaged over its prototypes."""
    hits, vis, noisy = [], [], []
    for _, g in rows.groupby("prototype"):
        by = {k: [np.array(p) for p in d.sort_values("image")["parts"]] for k, d in g.groupby("metric")}
        hits.append(by.get("part_hits", []))
        vis.append(by.get("part_visible", []))
        noisy.append(by.get("part_hits_noisy", []))
    records = [(method, "all", np.nan, "part_consistency",
                float(np.mean([M.part_consistency(np.array([h]), np.array([v])) for h, v in zip(hits, vis)])),
                len(hits))]
    if all(len(a) == len(b) for a, b in zip(noisy, hits)):
        records.append((method, "all", np.nan, "part_stability",
                        float(np.mean([M.part_stability(np.array([h]), np.array([n])) for h, n in zip(hits, noisy)])),
                        len(hits)))
    return pd.DataFrame(records, columns=SUMMARY_COLUMNS)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows),
            ""]


def markdown_tables(summary: pd.DataFrame, dataset: str, images: int, skipped: int,
                    method_order: list[str] | None = None) -> str:
    """``summary.md``: per mask metric a table of methods x percentiles, the percentile-free measures, the boxes
    hit by a region, and (with several findings) Dice per finding. ``method_order``: the rows' order (else sorted)."""
    order = method_order or []
    methods = sorted(summary["method"].unique(), key=lambda m: (order.index(m) if m in order else len(order), m))
    ps = sorted(summary["percentile"].dropna().unique())
    get = {(r.method, r.finding, None if pd.isna(r.percentile) else r.percentile, r.metric): r.value
           for r in summary.itertuples()}
    val = lambda *k: f"{get.get(k, float('nan')):.3f}"  # noqa: E731
    lines = [f"# Prototype localisation on {dataset}: {images} images evaluated, {skipped} skipped", ""]
    empty = summary[(summary["metric"] == "empty") & (summary["finding"] == "all")]
    if not empty.empty:
        lines += ["Empty heatmaps (nothing localized; their masks are empty and score 0 below): " + ", ".join(
            f"{r.method} {round(r.value * r.n)} of {r.n}" for r in empty.itertuples()), ""]
    for metric in M.MASK_METRICS:
        lines += [f"## {metric} of the top-(100-p)% mask", ""]
        lines += _table(["method", *(f"p{p:g}" for p in ps)], [[m, *(val(m, "all", p, metric) for p in ps)]
                                                                for m in methods])
    free = [k for k in FREE if any((m, "all", None, k) in get for m in methods)]
    if free:
        lines += ["## Faithfulness and parts (percentile-free)", ""]
        lines += _table(["method", *free], [[m, *(val(m, "all", None, k) for k in free)] for m in methods])
    hits = sorted({(p, k) for _, f, p, k in get if f == "all" and k.startswith("region_hit_")})
    if hits:
        lines += ["## Ground-truth boxes hit by a region of the mask", ""]
        lines += _table(["method", *(f"IoU >= {k.removeprefix('region_hit_iou')} (p{p:g})" for p, k in hits)],
                        [[m, *(val(m, "all", p, k) for p, k in hits)] for m in methods])
    findings = sorted(set(summary["finding"]) - {"all"})
    if findings:
        lines += ["## Dice per finding", ""]
        lines += _table(["finding", "method", *(f"p{p:g}" for p in ps)],
                        [[f, m, *(val(m, f, p, "dice") for p in ps)] for f in findings for m in methods])
    return "\n".join(lines)
