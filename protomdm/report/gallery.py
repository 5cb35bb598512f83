"""The prototype gallery: what each prototype *is*, the training image region it was pushed to, shown with the
network's own region (its upsampled map) and with MDM's.

``protomdm prototypes --ckpt model.pt --out gallery/`` writes a PNG per prototype, ``index.csv`` and one
self-contained ``gallery.html`` grouped by class and sortable by weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import to_model_input
from ..explain import PrototypeSelector, create_localizer
from ..explain.case import last_layer_weights
from ..explain.localization import Localization, model_device
from ..explain.mdm import images_per_search
from ..explain.registry import MethodConfigs, with_mdm
from ..files import atomic_write, check_writable, write_csv
from ..models import PrototypeModel, load_model_and_extra
from .html import esc, hstack, img_tag, overlay_rgb, page, png_bytes

INDEX_COLUMNS = ("prototype", "class_name", "weight", "similarity", "dataset", "source", "network_box", "method_box",
                 "png")
NO_PROVENANCE = ("This checkpoint records no prototype sources (it was trained before protomdm kept them, or by "
                 "another codebase): the prototypes are listed with their weights only. Training (or a push) with "
                 "this version records them.")


def source_pixels(record: dict[str, Any]) -> np.ndarray | None:
    """The source thumbnail of a push record as ``(H, W)`` or ``(H, W, 3)`` floats in [0, 1], if recorded."""
    thumb = record.get("thumbnail")
    if not isinstance(thumb, torch.Tensor):
        return None
    px = thumb.float().numpy() / 255
    return px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)


def push_records(extra: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The push records in a checkpoint's ``extra`` (:func:`~protomdm.models.load_model_and_extra`), None if it has
    none."""
    recs = extra.get("push")
    return recs if isinstance(recs, list) and recs else None


@dataclass
class GalleryEntry:
    prototype: int
    class_name: str
    weight: float
    record: dict[str, Any] | None = None
    pixels: np.ndarray | None = None  # the source image, as stored (thumbnail)
    network: Localization | None = None
    method: Localization | None = None


@dataclass
class Gallery:
    out_dir: Path
    entries: list[GalleryEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def localize_sources(model: PrototypeModel, entries: list[GalleryEntry], method: str, config: Any,
                     progress: bool) -> None:
    """Localize every entry's prototype in its own source image with the upsampling search and ``method``; the
    sources go through the localizer in chunks of several images (MDM: one search per chunk). ``config``:
    ``method``'s settings."""
    todo = [e for e in entries if e.pixels is not None]
    device = model_device(model)
    chunk = images_per_search(None, device, model)
    bar = tqdm(total=len(todo), desc=f"gallery ({method})", unit="prototype", disable=not progress)
    localizers = {"upsample": create_localizer("upsample"), method: create_localizer(method, config)}
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        x = torch.cat([to_model_input(e.pixels, model.config) for e in part]).to(device)
        sel = PrototypeSelector(model, [e.prototype for e in part])
        pairs = [(i, i) for i in range(len(part))]
        nets = localizers["upsample"].localize_pairs(x, sel, pairs)
        mine = localizers[method].localize_pairs(x, sel, pairs) if method != "upsample" else nets
        for e, n, m in zip(part, nets, mine):
            e.network, e.method = n, m
        bar.update(len(part))
    bar.close()


def _box_in(loc: Localization | None, size: tuple[int, int], percentile: float) -> list[int] | None:
    """``loc``'s box mapped from the model input to an image of ``size`` (H, W)."""
    return loc.in_original(size, percentile)["box"] if loc is not None else None


def entry_panels(e: GalleryEntry, method: str, percentile: float, side: int = 200) -> np.ndarray:
    """The source image, the network's region and ``method``'s, side by side (uint8 RGB)."""
    size = e.pixels.shape[:2]
    panels = [overlay_rgb(e.pixels, side=side)]
    for loc in (e.network, e.method):
        box = _box_in(loc, size, percentile)
        panels.append(overlay_rgb(e.pixels, loc.heatmap, [box] if box else [], side=side))
    return hstack(panels)


def make_gallery(ckpt: str | Path, out_dir: str | Path, *, method: str = "mdm",
                 method_configs: MethodConfigs | None = None, device: str = "auto", percentile: float = 95.0,
                 overwrite: bool = False, progress: bool = False, mdm: Any = None) -> Gallery:
    """Write the gallery of ``ckpt``'s prototypes into ``out_dir``; see the module docstring.

    ``percentile``: the region drawn as a box (95: ProtoPNet's own choice for its prototype crops).
    """
    from ..device import resolve_device
    from ..explain.registry import localizer_entry
    from ..geometry import check_percentile

    check_percentile(percentile)
    localizer_entry(method)
    model, extra = load_model_and_extra(ckpt, resolve_device(device))
    records = push_records(extra)
    weight, _ = last_layer_weights(model)
    gallery = Gallery(Path(out_dir))
    by_proto = {int(r["prototype"]): r for r in records or []}
    for j in range(model.num_prototypes):
        c = model.prototype_class(j)
        rec = by_proto.get(j)
        gallery.entries.append(GalleryEntry(j, model.class_names[c], float(weight[c, j]), rec,
                                            source_pixels(rec) if rec else None))
    if records is None:
        gallery.notes.append(NO_PROVENANCE)
    elif any(e.pixels is None for e in gallery.entries):
        gallery.notes.append(f"{sum(e.pixels is None for e in gallery.entries)} prototype(s) have no recorded source "
                             "image (no training image of their class was seen at push).")
    names = ["gallery.html", "index.csv"] + [f"prototype_{e.prototype:04d}.png" for e in gallery.entries
                                             if e.pixels is not None]
    out = check_writable(out_dir, names, overwrite)
    localize_sources(model, gallery.entries, method, with_mdm(method_configs, mdm).get(method), progress)
    rows, html_png = [], {}
    for e in gallery.entries:
        png = None
        if e.pixels is not None:
            panels = entry_panels(e, method, percentile)
            png = out / f"prototype_{e.prototype:04d}.png"
            atomic_write(png, lambda tmp, p=panels: Path(tmp).write_bytes(png_bytes(p)))
            html_png[e.prototype] = panels
            gallery.files[f"prototype_{e.prototype}"] = png
        rec = e.record or {}
        size = e.pixels.shape[:2] if e.pixels is not None else None
        rows.append({"prototype": e.prototype, "class_name": e.class_name, "weight": f"{e.weight:.6g}",
                     "similarity": _similarity(rec), "dataset": rec.get("dataset", ""), "source": rec.get("source", ""),
                     "network_box": _fmt_box(_box_in(e.network, size, percentile)) if size else "",
                     "method_box": _fmt_box(_box_in(e.method, size, percentile)) if size else "",
                     "png": png.name if png else ""})
    gallery.files["index"] = write_csv(out / "index.csv", INDEX_COLUMNS, rows)
    html = gallery_html(model, gallery, html_png, method, percentile, Path(ckpt).name)
    gallery.files["html"] = atomic_write(out / "gallery.html", lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return gallery


def _similarity(rec: dict[str, Any]) -> str:
    if "similarity" in rec:
        return f"{rec['similarity']:.4g}"
    if "distance" in rec:  # ProtoPNet's log similarity of the recorded distance
        return f"{float(np.log((rec['distance'] + 1) / (rec['distance'] + 1e-4))):.4g}"
    return ""


def _fmt_box(box: tuple[int, int, int, int] | None) -> str:
    return " ".join(map(str, box)) if box else ""


def gallery_html(model: PrototypeModel, gallery: Gallery, panels: dict[int, np.ndarray], method: str,
                 percentile: float, ckpt_name: str) -> str:
    """The gallery page: one section per class, a table of its prototypes (sortable by weight)."""
    arch, own = model.config.architecture, model.localization_map_name
    body = [f"<h1>Prototypes of {esc(ckpt_name)}</h1>",
            f'<p class="lead">{esc(arch)} ({esc(model.config.backbone)}), {model.num_prototypes} prototypes of '
            f"{model.num_classes} classes. Each prototype is a part of a training image: the network says "
            "&ldquo;this looks like that&rdquo; when a new image has a region close to it. Each row shows the training "
            f"image it was taken from, where the network's own {own} puts it (upsampled), and where {esc(method.upper())} "
            f"finds the evidence that keeps its score; the white box is the top {100 - percentile:g}% of each "
            "map. Weight: how much the prototype's similarity adds to its class's score. Click a column to sort.</p>"]
    body += [f'<p class="note">{esc(n)}</p>' for n in gallery.notes]
    for c, name in enumerate(model.class_names):
        entries = [e for e in gallery.entries if e.class_name == name]
        body.append(f"<h2>{esc(name)} ({len(entries)} prototypes)</h2>")
        body.append('<table><thead><tr><th class="sortable">prototype</th><th class="sortable">weight</th>'
                    '<th class="sortable">similarity at push</th><th>source</th>'
                    f"<th>source image &middot; network's region &middot; {esc(method.upper())} region</th>"
                    "</tr></thead><tbody>")
        for e in entries:
            rec = e.record or {}
            src = (f'{esc(rec.get("source", ""))}<br><span class="caption">{esc(rec.get("dataset", ""))}</span>'
                   if rec.get("source") else '<span class="caption">not recorded</span>')
            img = img_tag(panels[e.prototype], f"prototype {e.prototype}") if e.prototype in panels else ""
            body.append(f'<tr><td class="num" data-value="{e.prototype}">{e.prototype}</td>'
                        f'<td class="num {"pos" if e.weight > 0 else "neg"}" data-value="{e.weight}">{e.weight:.3f}</td>'
                        f'<td class="num">{esc(_similarity(rec))}</td><td>{src}</td><td>{img}</td></tr>')
        body.append("</tbody></table>")
    return page(f"Prototypes of {ckpt_name}", "\n".join(body), sortable=True)

