"""The case report of one scan: the predicted classes, and for the prototypes that drove the decision the scan
with the prototype's region in it beside the training image region it stands for ("this looks like that"), with
the similarity, the weight and the contribution; HTML (self-contained), PNG and JSON, and for a DICOM scan a DICOM
structured report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.images import box_to_original
from ..data.loaded import LoadedImage
from ..explain.case import CaseReport, CaseRow
from ..files import atomic_write, write_json
from .dicom import Finding, write_case_sr
from .gallery import source_pixels
from .html import esc, hstack, img_tag, overlay_rgb, page, png_bytes, vstack
from .names import has_dicom_outputs

SIDE = 220  # pixels of each image panel


def report_names(stem: str, dicom: bool = False) -> dict[str, str]:
    """The files of one case report (for a DICOM scan also its structured report)."""
    names = {"html": f"{stem}_report.html", "png": f"{stem}_report.png", "json": f"{stem}_report.json"}
    return {**names, "sr": f"{stem}_report_sr.dcm"} if dicom else names


def _scan_panel(image: LoadedImage, row: CaseRow, percentile: float) -> np.ndarray:
    loc = row.localization
    boxes = [r["box"] for r in loc.in_original(image.size, percentile)["regions"][:3]]
    return overlay_rgb(image.pixels, loc.heatmap, boxes, side=SIDE)


def _source_panel(row: CaseRow, input_size: tuple[int, int]) -> np.ndarray | None:
    px = source_pixels(row.source) if row.source else None
    if px is None:
        return None
    box = row.source.get("activation_box") or row.source.get("receptive_field_box")
    boxes = [box_to_original(box, input_size, px.shape[:2])] if box else []
    return overlay_rgb(px, None, boxes, side=SIDE, box_colour=(255, 200, 0))


def case_html(report: CaseReport, image: LoadedImage, title: str, percentile: float = 90.0) -> tuple[str, np.ndarray]:
    """``(the page, a PNG-ready summary image)`` of one case report."""
    input_size = report.rows[0].localization.heatmap.shape if report.rows else image.size
    probs = "".join(
        f'<tr><td>{esc(c["name"])}</td><td class="num">{c["probability"]:.1%}</td>'
        f'<td><span class="prob" style="width:{max(1, round(160 * c["probability"]))}px"></span></td>'
        f'<td class="num">{c["logit"]:.3f}</td></tr>' for c in report.classes)
    shown = sum(r.contribution for r in report.rows)
    body = [f"<h1>{esc(title)}</h1>",
            '<p class="lead">What the model predicts, and which learned prototypes (parts of training images) drove '
            "the prediction: for each, <b>where it is in this scan</b> and <b>the training image region it stands "
            "for</b>. Contribution = similarity &times; weight; the contributions and the bias add up to the score.</p>",
            "<h2>Prediction</h2>", '<table><thead><tr><th>class</th><th>probability</th><th></th><th>score (logit)'
            "</th></tr></thead><tbody>", probs, "</tbody></table>",
            f"<h2>Why {esc(report.explained_class)}: the top {len(report.rows)} prototypes</h2>"]
    body += [f'<p class="note">{esc(n)}</p>' for n in report.notes]
    body.append("<table><thead><tr><th>prototype</th><th>in this scan (heatmap; white: the top "
                f"{100 - percentile:g}%)</th><th>looks like (training image; yellow: the prototype)</th>"
                "<th>similarity</th><th>weight</th><th>contribution</th></tr></thead><tbody>")
    pngs = []
    for r in report.rows:
        scan = _scan_panel(image, r, percentile)
        src = _source_panel(r, tuple(input_size))
        status = "" if r.localization.ok else f'<br><span class="caption">empty: {esc(r.localization.reason)}</span>'
        source_cell = (img_tag(src, f"source of prototype {r.prototype}") + '<br><span class="caption">'
                       + esc(r.source.get("source", "")) + "</span>") if src is not None else \
            '<span class="caption">source not recorded</span>'
        body.append(f'<tr><td>#{r.prototype}<br><span class="caption">{esc(r.class_name)}</span></td>'
                    f"<td>{img_tag(scan, f'prototype {r.prototype} in the scan')}{status}</td><td>{source_cell}</td>"
                    f'<td class="num">{r.similarity:.3f}</td><td class="num">{r.weight:.3f}</td>'
                    f'<td class="num {"pos" if r.contribution >= 0 else "neg"}">{r.contribution:+.3f}</td></tr>')
        pngs.append(hstack([scan] + ([src] if src is not None else [])))
    body.append("</tbody></table>")
    body.append(f'<p>Score of {esc(report.explained_class)}: {shown:+.3f} (these prototypes) {report.rest:+.3f} '
                f"(the other prototypes) {report.bias:+.3f} (bias) = <b>{report.logit:.3f}</b>.</p>")
    summary = vstack(pngs) if pngs else overlay_rgb(image.pixels, side=SIDE)
    return page(title, "\n".join(body)), summary


def case_finding(report: CaseReport, image: LoadedImage, percentile: float = 90.0) -> Finding:
    """The case report as an SR's finding: the explained class and its probability, and the top prototypes with
    their boxes in the scan's pixels."""
    prob = next(c["probability"] for c in report.classes if c["name"] == report.explained_class)
    protos = []
    for r in report.rows:
        protos.append({"prototype": r.prototype, "class_name": r.class_name, "similarity": r.similarity,
                       "weight": r.weight, "contribution": r.contribution,
                       "box": r.localization.in_original(image.size, percentile)["box"]})
    first = report.rows[0].localization if report.rows else None
    return Finding(f"case report: {report.explained_class}", report.explained_class, prob,
                   first.method if first else "none", (first.settings or {}) if first else {}, [],
                   image.pixel_spacing, protos)


def write_case_report(report: CaseReport, image: LoadedImage, out: Path, stem: str, title: str,
                      percentile: float = 90.0) -> dict[str, Path]:
    """Write :func:`report_names` into the existing folder ``out``; the JSON has no patient attributes (only the
    report's numbers, boxes in model-input pixels and the prototypes' recorded sources), nor has the SR (a DICOM
    scan's: the decision and each top prototype's box, similarity, weight and contribution)."""
    names = report_names(stem, has_dicom_outputs(image))
    html, summary = case_html(report, image, title, percentile)
    files = {k: out / n for k, n in names.items()}
    if "sr" in files:  # first: a refusal of the source leaves no file behind
        write_case_sr(image.source, case_finding(report, image, percentile), files["sr"])
    atomic_write(files["html"], lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    atomic_write(files["png"], lambda tmp: Path(tmp).write_bytes(png_bytes(summary)))
    write_json(files["json"], {"image": stem, **report.as_dict()})
    return files
