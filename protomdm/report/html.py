"""Self-contained HTML pages: images embedded as data URIs, the style inline, no script or font from anywhere else,
so a page opens from a USB stick on a hospital workstation with no network."""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import numpy as np

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #1b1f24;
       max-width: 1200px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
p.lead { color: #444; margin-top: 0; } p.note { background: #fff4ce; padding: 8px 12px; border-radius: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #d0d7de; padding: 6px 10px; text-align: left; vertical-align: middle; }
th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
th.sortable { cursor: pointer; } th.sortable:after { content: " \\21C5"; color: #888; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pos { color: #1a7f37; } td.neg { color: #cf222e; }
img.panel { image-rendering: auto; border: 1px solid #d0d7de; }
.caption { font-size: 12px; color: #555; }
.prob { display: inline-block; height: 10px; background: #0969da; vertical-align: middle; margin-right: 6px; }
"""

# sorts a table by the clicked column (numbers as numbers); inline, nothing fetched
SORT_SCRIPT = """
document.querySelectorAll("th.sortable").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var rows = Array.prototype.slice.call(body.rows), down = th.dataset.down !== "1";
    rows.sort(function (a, b) {
      var x = a.cells[i].dataset.value || a.cells[i].textContent, y = b.cells[i].dataset.value || b.cells[i].textContent;
      var fx = parseFloat(x), fy = parseFloat(y);
      var c = (isNaN(fx) || isNaN(fy)) ? x.localeCompare(y) : fx - fy;
      return down ? -c : c;
    });
    th.dataset.down = down ? "1" : "0";
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def esc(text: object) -> str:
    """``text`` escaped for HTML."""
    return html.escape(str(text), quote=True)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` or ``(H, W)`` uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")  # optimize=True: 2.5x the time for 0.7% smaller reports
    return buf.getvalue()


def data_uri(rgb: np.ndarray) -> str:
    """An image as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def img_tag(rgb: np.ndarray, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img class="panel" src="{data_uri(rgb)}" alt="{esc(alt)}"{w}>'


def overlay_rgb(pixels: np.ndarray, heatmap: np.ndarray | None = None, boxes: Sequence[Sequence[float]] = (),
                side: int = 224, box_colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """An image (``(H, W)`` or ``(H, W, 3)`` in [0, 1]) with an optional heatmap (``(h, w)`` in [0, 1] at any
    resolution, stretched over the image; jet, 45% opacity) and boxes (``(x0, y0, x1, y1)`` exclusive ends, in the
    image's pixels), as uint8 RGB with its longest side ``side``.

    A large image is subsampled to about twice ``side`` before anything is coloured, in float32, so an 8192^2 scan
    costs a few MB here, not gigabytes."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from ..geometry import resize_heatmap

    h, w = pixels.shape[:2]
    step = max(1, max(h, w) // (2 * side))
    small = np.clip(np.asarray(pixels[::step, ::step], dtype=np.float32), 0, 1)
    rgb = np.repeat(small[..., None], 3, -1) if small.ndim == 2 else small[..., :3]
    if heatmap is not None:
        heat = resize_heatmap(np.clip(heatmap, 0, 1), rgb.shape[:2])
        rgb = 0.55 * rgb + 0.45 * colormaps["jet"](heat)[..., :3].astype(np.float32)
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in boxes:  # at least one pixel wide and high, however thin the image
        draw.rectangle([x0 * scale, y0 * scale, max(x0 * scale, x1 * scale - 1), max(y0 * scale, y1 * scale - 1)],
                       outline=box_colour, width=2)
    return np.asarray(img)


def stack(images: Sequence[np.ndarray], axis: int, gap: int = 6) -> np.ndarray:
    """uint8 RGB images on white, side by side (``axis`` 1, top-aligned) or one above the other (``axis`` 0,
    left-aligned), ``gap`` pixels apart."""
    across = 1 - axis
    size = [0, 0]
    size[axis] = sum(im.shape[axis] for im in images) + gap * (len(images) - 1)
    size[across] = max(im.shape[across] for im in images)
    out = np.full((*size, 3), 255, np.uint8)
    at = 0
    for im in images:
        h, w = im.shape[:2]
        y, x = (at, 0) if axis == 0 else (0, at)
        out[y:y + h, x:x + w] = im
        at += im.shape[axis] + gap
    return out


def hstack(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Images side by side, top-aligned."""
    return stack(images, 1, gap)


def vstack(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Images one above the other, left-aligned."""
    return stack(images, 0, gap)


def page(title: str, body: str, sortable: bool = False) -> str:
    """A whole HTML5 document."""
    script = f"<script>{SORT_SCRIPT}</script>" if sortable else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{STYLE}</style>\n</head>\n'
            f"<body>\n{body}\n{script}\n</body>\n</html>\n")
