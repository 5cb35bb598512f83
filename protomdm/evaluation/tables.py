"""Aggregation of the evaluation's long results frame, and its tables in the layout of the MDM paper."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics as M
from .bootstrap import LEVEL, REPLICATES, bootstrap_interval, paired_difference_interval

SUMMARY_COLUMNS = ("method", "finding", "percentile", "metric", "value", "n", "ci_low", "ci_high")
MEAN_COLUMNS = SUMMARY_COLUMNS[:6]  # the rows without an interval (Average Drop/Increase, parts)
REFERENCE = "mdm"  # the method the paired differences are taken from
PAIRED = ("score", "score_heatmap_masked")  # Average Drop / Increase's Y and O, per unit
# the percentile-free measures of summary.md (``seconds`` stays in summary.csv: it differs from run to run)
FREE = ("dice_area", "iou_area", "pointing_game", "hit", "average_drop", "average_increase", "deletion_auc",
        "insertion_auc", "part_consistency", "part_stability")


def headline_percentile(percentiles: list[float]) -> float:
    """The percentile that region scores, exports and the headline tables use: 90, else the middle one given."""
    ps = sorted(percentiles)
    return 90.0 if 90.0 in ps else ps[len(ps) // 2]


def _means(group: pd.DataFrame) -> pd.Series:
    """Mean, count and 95% bootstrap interval (resampling images) of a group's values."""
    low, high = bootstrap_interval(group["value"].to_numpy(), group["image"].to_numpy())
    return pd.Series({"value": group["value"].mean(), "n": group["value"].count(), "ci_low": low, "ci_high": high})


def summarise(results: pd.DataFrame, by_finding: bool = False, timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """Means of a results frame (:func:`~protomdm.evaluation.results.read_results`) per (method, finding or
    ``"all"``, percentile, metric), with their counts and 95% bootstrap intervals over images (``ci_low``,
    ``ci_high``: :func:`~protomdm.evaluation.bootstrap.bootstrap_interval`), plus Average Drop and Increase and, from
    the CUB part rows, part consistency and stability; with ``timings``
    (:func:`~protomdm.evaluation.results.read_timings`) the mean ``seconds`` per localization. Columns:
    :data:`SUMMARY_COLUMNS` (``percentile`` NaN where there is none; intervals NaN where none is computed)."""
    frame = results.assign(unit_finding=results["finding"])
    scoped = pd.concat([frame.assign(finding="all")] + ([frame] if by_finding else []), ignore_index=True)
    keys = ["method", "finding", "percentile", "metric"]
    plain = scoped[~scoped["metric"].isin(PAIRED) & scoped["parts"].isna()]
    out = [pd.DataFrame(columns=list(SUMMARY_COLUMNS)) if plain.empty else
           plain.groupby(keys, dropna=False, sort=False)[["value", "image"]].apply(_means).reset_index()]
    paired = scoped[scoped["metric"].isin(PAIRED)]
    if not paired.empty:
        wide = paired.pivot_table(index=["method", "finding", "image", "unit_finding", "prototype"], columns="metric",
                                  values="value", aggfunc="first").dropna()
        for (m, f), g in wide.groupby(level=["method", "finding"]):
            y, o = g["score"].to_numpy(), g["score_heatmap_masked"].to_numpy()
            out.append(pd.DataFrame([(m, f, np.nan, "average_drop", M.average_drop(y, o), len(g)),
                                     (m, f, np.nan, "average_increase", M.average_increase(y, o), len(g))],
                                    columns=MEAN_COLUMNS))
    if timings is not None and not timings.empty:
        t = timings.groupby("method")["seconds"].agg(value="mean", n="count").reset_index()
        out.append(t.assign(finding="all", percentile=np.nan, metric="seconds"))
    parts = frame[frame["parts"].notna()]
    for m, g in parts.groupby("method", sort=True):
        out.append(_part_summary(m, g))
    summary = pd.concat(out, ignore_index=True).astype({"n": "int64"})
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
    return pd.DataFrame(records, columns=MEAN_COLUMNS)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows),
            ""]


DIFFERENCE_COLUMNS = ("method", "versus", "percentile", "metric", "difference", "n", "ci_low", "ci_high")


def headline_metrics(frame: pd.DataFrame, percentile: float) -> list[tuple[float, str]]:
    """``(percentile or NaN, metric)`` of the headline figures: Dice and IoU at ``percentile``, Dice at the object's
    own area, the pointing game and, where ``frame`` (results or summary) has it, CheXlocalize's hit."""
    have = set(frame["metric"])
    return [(percentile, "dice"), (percentile, "iou"), (np.nan, "dice_area"), (np.nan, "pointing_game")] + (
        [(np.nan, "hit")] if "hit" in have else [])


def paired_differences(results: pd.DataFrame, percentile: float, reference: str = REFERENCE) -> pd.DataFrame:
    """``reference`` minus every other method on the headline metrics, over the (image, finding) units both scored
    (each unit's mean over its prototypes), with the 95% bootstrap interval resampling images. Columns:
    :data:`DIFFERENCE_COLUMNS`; empty without ``reference`` or another method."""
    rows = []
    present = set(results["method"])
    methods = sorted(present - {reference}) if reference in present else []
    for p, metric in headline_metrics(results, percentile):
        sel = results[(results["metric"] == metric) & ((results["percentile"] == p) if not np.isnan(p)
                                                       else results["percentile"].isna())]
        units = sel.groupby(["method", "image", "finding"])["value"].mean().unstack("method")
        for m in methods:
            if m not in units or reference not in units:
                continue
            both = units[[reference, m]].dropna()
            if both.empty:
                continue
            mean, low, high = paired_difference_interval(both[reference], both[m],
                                                         both.index.get_level_values("image"))
            rows.append((reference, m, p, metric, mean, len(both), low, high))
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))


# Wang et al. 2017 (ChestX-ray8, CVPR), localization accuracy at T(IoU) = 0.1 of their unified DCNN on the NIH
# boxes; the other thresholds of their table are left out until checked against the paper
WANG_2017 = {0.1: {"Atelectasis": 0.69, "Cardiomegaly": 0.94, "Effusion": 0.66, "Infiltration": 0.71, "Mass": 0.40,
                   "Nodule": 0.14, "Pneumonia": 0.63, "Pneumothorax": 0.38}}


def _accuracy_tables(get: dict, methods: list[str], findings: list[str], dataset: str) -> list[str]:
    """Wang et al.'s localization accuracy: the share of ground-truth boxes that the box of some connected region
    of the mask overlaps by T(IoU) (or T(IoBB), the intersection over the region box's area) at each threshold,
    overall and per finding; on NIH their published figures beside."""
    hits = sorted({(p, k) for _, f, p, k in get if f == "all" and k.startswith("region_hit_")},
                  key=lambda pk: (pk[1].startswith("region_hit_iobb"), pk[0], pk[1]))
    if not hits:
        return []
    p = hits[0][0]
    threshold = lambda k: k.removeprefix("region_hit_iobb").removeprefix("region_hit_iou")  # noqa: E731
    name = lambda k: ("T(IoBB) " if "iobb" in k else "T(IoU) ") + threshold(k)  # noqa: E731
    val = lambda *k: f"{get.get(k, float('nan')):.3f}"  # noqa: E731
    lines = ["## Localization accuracy at T(IoU) and T(IoBB) (Wang et al. 2017)", "",
             f"The share of ground-truth boxes that the bounding box of some connected region of the top-{100 - p:g}% "
             "mask overlaps by at least T: IoU, or IoBB (the intersection over the region box's own area).", ""]
    lines += _table(["method", *(name(k) for _, k in hits)], [[m, *(val(m, "all", q, k) for q, k in hits)]
                                                             for m in methods])
    if findings:
        iou = [(q, k) for q, k in hits if "iobb" not in k]
        rows = [[f, m, *(val(m, f, q, k) for q, k in iou)] for f in findings for m in methods]
        if dataset == "nih":
            published = lambda f, k: WANG_2017.get(float(threshold(k)), {}).get(f)  # noqa: E731
            rows += [[f, "Wang et al. 2017", *("-" if published(f, k) is None else f"{published(f, k):.2f}"
                                               for _, k in iou)] for f in findings]
            rows.sort(key=lambda r: r[0])
        lines += ["### T(IoU) per finding", ""]
        lines += _table(["finding", "method", *(name(k) for _, k in iou)], rows)
    return lines


def markdown_tables(summary: pd.DataFrame, dataset: str, images: int, skipped: int,
                    method_order: list[str] | None = None, differences: pd.DataFrame | None = None) -> str:
    """``summary.md``: the headline means with their 95% bootstrap intervals (per finding too, where there are
    several: CheXlocalize's mIoU and hit rate), the paired ``differences`` (:func:`paired_differences`), then per
    mask metric a table of methods x percentiles, the percentile-free measures, the boxes hit by a region, and Dice
    per finding. ``method_order``: the rows' order (else sorted)."""
    order = method_order or []
    methods = sorted(summary["method"].unique(), key=lambda m: (order.index(m) if m in order else len(order), m))
    ps = sorted(summary["percentile"].dropna().unique())
    rec = {(r.method, r.finding, None if pd.isna(r.percentile) else r.percentile, r.metric): r
           for r in summary.itertuples()}
    get = {k: r.value for k, r in rec.items()}
    val = lambda *k: f"{get.get(k, float('nan')):.3f}"  # noqa: E731

    def ci(*k) -> str:
        r = rec.get(k)
        return "nan" if r is None else f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"

    lines = [f"# Prototype localization on {dataset}: {images} images evaluated, {skipped} skipped", ""]
    empty = summary[(summary["metric"] == "empty") & (summary["finding"] == "all")]
    if not empty.empty:
        lines += ["Empty heatmaps (nothing localized; their masks are empty and score 0 below): " + ", ".join(
            f"{r.method} {round(r.value * r.n)} of {r.n}" for r in empty.itertuples()), ""]
    findings = sorted(set(summary["finding"]) - {"all"})
    if ps:
        hp = headline_percentile(ps)
        heads = [(None if np.isnan(p) else p, k) for p, k in headline_metrics(summary, hp)]
        name = lambda p, k: f"{k} (p{p:g})" if p is not None else k  # noqa: E731
        lines += [f"## Headline means with {LEVEL:.0%} bootstrap intervals ({REPLICATES} resamples of the images)", ""]
        lines += _table(["method", *(name(p, k) for p, k in heads)],
                        [[m, *(ci(m, "all", p, k) for p, k in heads)] for m in methods])
        if findings:
            per = [(hp, "iou"), heads[-1]]
            lines += [f"## mean IoU (p{hp:g}) and {'hit rate' if heads[-1][1] == 'hit' else 'pointing game'} per "
                      f"finding, {LEVEL:.0%} bootstrap intervals", ""]
            lines += _table(["finding", "method", *(name(p, k) for p, k in per)],
                            [[f, m, *(ci(m, f, p, k) for p, k in per)] for f in findings for m in methods])
        if differences is not None and not differences.empty:
            lines += [f"## {differences['method'].iloc[0]} minus each other method, paired by image and finding "
                      f"({LEVEL:.0%} bootstrap intervals)", ""]
            lines += _table(["versus", "metric", "difference", "units"], [
                [r.versus, name(None if pd.isna(r.percentile) else r.percentile, r.metric),
                 f"{r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", str(r.n)]
                for r in differences.itertuples()])
    for metric in M.MASK_METRICS:
        lines += [f"## {metric} of the top-(100-p)% mask", ""]
        rows = [[m, *(val(m, "all", p, metric) for p in ps)] for m in methods]
        if metric == "dice" and methods and (methods[0], "all", ps[0], "dice_ceiling") in get:
            rows.append(["ceiling: the best a mask of exactly that size can reach",
                         *(val(methods[0], "all", p, "dice_ceiling") for p in ps)])
        lines += _table(["method", *(f"p{p:g}" for p in ps)], rows)
    free = [k for k in FREE if any((m, "all", None, k) in get for m in methods)]
    if free:
        lines += ["## Faithfulness and parts (percentile-free)", ""]
        lines += _table(["method", *free], [[m, *(val(m, "all", None, k) for k in free)] for m in methods])
    lines += _accuracy_tables(get, methods, findings, dataset)
    if findings:
        lines += ["## Dice per finding", ""]
        lines += _table(["finding", "method", *(f"p{p:g}" for p in ps)],
                        [[f, m, *(val(m, f, p, "dice") for p in ps)] for f in findings for m in methods])
    return "\n".join(lines)
