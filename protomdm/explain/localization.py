"""The one result type every localizer returns."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..data.images import box_to_original
from ..errors import UserError
from ..geometry import Box, Region, mask_box, regions, top_percentile_mask


@dataclass
class Localization:
    """Where the explained activation's evidence lies in one image.

    Attributes:
        heatmap: ``(H, W)`` float32 in [0, 1], at the model's input resolution.
        method: ``"mdm"``, ``"upsample"``, ``"gradcam"``...
        score: the explained activation on the unmasked image (its mean, if it is a map), or None.
        settings: the method's settings, as a plain dict.
        seconds: wall time of the search.
        device: where it ran.
        steps: optimisation steps taken (MDM: the largest over its masks), 0 for one-pass methods.
        status: ``"ok"``, or ``"empty"`` when there is nothing to show: the heatmap is zero or flat everywhere, or
            the explained activation does not depend on the image. ``box()`` is then None.
        reason: for an ``empty`` status, why, and what to try.
    """

    heatmap: np.ndarray
    method: str
    score: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    steps: int = 0
    status: str = "ok"
    reason: str = ""
    _masks: dict[float, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status == "ok":
            self.reason = heatmap_problem(self.heatmap)
            if self.reason:
                self.status = "empty"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def binary(self, percentile: float = 90) -> np.ndarray:
        """``(H, W)`` bool mask of the top ``(100 - percentile)%`` of the heatmap (thresholded once per percentile:
        :meth:`box` and :meth:`regions` read the same mask; a copy is returned)."""
        if percentile not in self._masks:
            self._masks[percentile] = top_percentile_mask(self.heatmap, percentile)
        return self._masks[percentile].copy()

    def box(self, percentile: float = 90) -> Box | None:
        """Bounding box ``(x0, y0, x1, y1)`` (input pixels, exclusive ends) of :meth:`binary`; None if empty."""
        return mask_box(self.binary(percentile)) if self.ok else None

    def regions(self, percentile: float = 90) -> list[Region]:
        """Every connected region of :meth:`binary` (box, area, peak and mean heat), largest heat mass first: two
        separate findings give two regions, where :meth:`box` spans both. Empty for an ``empty`` status."""
        return regions(self.heatmap, percentile, self.binary(percentile)) if self.ok else []

    def in_original(self, size: tuple[int, int], percentile: float = 90) -> dict[str, Any]:
        """:meth:`box` and :meth:`regions` mapped to an original image of ``size (H, W)``: ``box`` and
        ``box_input`` (None if empty), ``regions`` (each with ``box`` in original and ``box_input`` in input
        pixels)."""
        box_in = self.box(percentile)
        to_original = lambda b: list(box_to_original(b, self.heatmap.shape, size))  # noqa: E731
        return {"box": to_original(box_in) if box_in else None, "box_input": list(box_in) if box_in else None,
                "regions": [{**r.as_dict(), "box": to_original(r.box), "box_input": list(r.box)}
                            for r in self.regions(percentile)]}

    def summary(self) -> dict[str, Any]:
        """JSON-safe metadata (everything but the heatmap)."""
        return {"method": self.method, "status": self.status, "reason": self.reason, "score": self.score,
                "settings": self.settings, "seconds": round(self.seconds, 4), "device": self.device,
                "steps": self.steps, "input_size": list(self.heatmap.shape)}


def heatmap_problem(heatmap: np.ndarray) -> str:
    """Why ``heatmap`` shows nothing (zero, flat or not finite everywhere), or "" when it shows something."""
    if not np.isfinite(heatmap).all():
        return "the heatmap has NaN or infinite values"
    lo, hi = float(heatmap.min()), float(heatmap.max())
    if hi <= 0:
        return "the heatmap is zero everywhere: no region keeps the explained activation"
    if hi - lo <= 1e-6 * hi:
        return "the heatmap is flat: every pixel scores the same"
    return ""


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run a block with ``model`` in eval mode, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter, else of its first buffer (CPU for a model with neither)."""
    p = next(itertools.chain(model.parameters(), model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


Pair = tuple[int, int]  # (image b, target k)


@dataclass
class Maps:
    """What :meth:`Localizer.compute_maps` returns for ``P`` (image, target) pairs; the base class turns it into
    :class:`Localization` objects.

    Attributes:
        heatmaps: ``(P, H, W)``, any scale: min-max scaled to [0, 1] unless ``normalized``.
        scores: the explained activation on each unmasked image (a map's mean), when the method computed it anyway;
            else the base class computes it.
        steps: optimisation steps per pair (or one number for all).
        reasons: per pair, why there is nothing to show (status ``empty``: e.g. masking the whole image does not move
            the activation), or ``""``.
        settings: per pair, settings or figures beside the method's own (merged into ``Localization.settings``).
        normalized: the heatmaps are already in [0, 1] as the method defines them.
    """

    heatmaps: torch.Tensor | np.ndarray
    scores: Sequence[float] | torch.Tensor | None = None
    steps: Sequence[int] | int = 0
    reasons: Sequence[str] | None = None
    settings: Sequence[dict[str, Any]] | None = None
    normalized: bool = False


def unit_scale(heatmap: np.ndarray) -> np.ndarray:
    """``heatmap`` min-max scaled to [0, 1] in float32 (zeros if flat)."""
    h = np.asarray(heatmap, np.float64)
    lo, hi = h.min(), h.max()
    return ((h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)).astype(np.float32)


class Localizer(abc.ABC):
    """Base class of every localizer (as pytorch-grad-cam's ``BaseCAM``): a subclass overrides
    :meth:`compute_maps`; the base class moves the images to the model's device, runs the model in eval mode, times
    the call, scales the maps, sets the ``empty`` status and builds each :class:`Localization`. Register a
    subclass with :func:`protomdm.explain.registry.register_localizer` to make it a method of every command.

    Attributes:
        method: the name written into each :class:`Localization` (the registered name).
        config: the method's settings dataclass, if it has one (written into ``Localization.settings``).
    """

    method: str = ""
    config: Any = None

    @abc.abstractmethod
    def compute_maps(self, x: torch.Tensor, selector, pairs: list[Pair]) -> Maps:
        """Maps of target ``k`` of ``selector`` in image ``b`` of ``x: (B, C, H, W)`` (on the model's device, the
        model in eval mode) for every ``(b, k)`` of ``pairs``, in that order."""

    def empty_hint(self) -> str:
        """What to try when a heatmap comes out zero everywhere (appended to the reason)."""
        return ""

    def settings(self) -> dict[str, Any]:
        """The method's settings as a plain dict."""
        cfg = self.config
        return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else {}

    def localize(self, images: torch.Tensor, selector, pairs: list[Pair] | None = None):
        """Where the selector's targets find their evidence in ``images``.

        Args:
            images: ``(B, C, H, W)``, or one ``(C, H, W)``, normalised for the model.
            selector: what is explained (its ``K`` targets).
            pairs: ``(image b, target k)`` pairs to localize; default every pair, image-major.

        Returns:
            one :class:`Localization` for one image and one target without ``pairs`` (``localize(x, selector)``);
            otherwise a list, one per pair, in the order of ``pairs``.
        """
        x = images[None] if images.dim() == 3 else images
        if pairs is None:
            pairs = [(b, k) for b in range(x.shape[0]) for k in range(selector.num_targets)]
            if len(pairs) == 1:
                return self.localize_pairs(x, selector, pairs)[0]
        return self.localize_pairs(x, selector, pairs)

    def localize_many(self, images: torch.Tensor, selector) -> list[list[Localization]]:
        """``result[b][k]``: the localization of the selector's target ``k`` in image ``b`` of ``(B, C, H, W)``."""
        k = selector.num_targets
        flat = self.localize_pairs(images, selector, [(b, j) for b in range(images.shape[0]) for j in range(k)])
        return [flat[b * k:(b + 1) * k] for b in range(images.shape[0])]

    def localize_pairs(self, images: torch.Tensor, selector, pairs: list[Pair]) -> list[Localization]:
        """Target ``k`` of ``selector`` in image ``b`` for every ``(b, k)`` of ``pairs``, in that order (the
        template: see the class docstring)."""
        if not pairs:
            return []
        n_img, n_tgt = images.shape[0], selector.num_targets
        bad = [pq for pq in pairs if not (0 <= pq[0] < n_img and 0 <= pq[1] < n_tgt)]
        if bad:
            raise UserError(f"pair {bad[0]} out of range: {n_img} image(s), {n_tgt} target(s)")
        device = model_device(selector.model)
        x = images.to(device)
        t0 = time.perf_counter()
        with eval_mode(selector.model):
            maps = self.compute_maps(x, selector, pairs)
            scores = maps.scores
            if scores is None:  # image by image: a result never depends on which images share its batch
                with torch.no_grad():
                    per_image = {b: selector.scores(x[b:b + 1]).float()[0] for b in sorted({b for b, _ in pairs})}
                scores = [float(per_image[b][k]) for b, k in pairs]
        seconds = (time.perf_counter() - t0) / len(pairs)
        heat = maps.heatmaps.detach().float().cpu().numpy() if isinstance(maps.heatmaps, torch.Tensor) \
            else np.asarray(maps.heatmaps)
        steps = [maps.steps] * len(pairs) if isinstance(maps.steps, int) else list(maps.steps)
        own = self.settings()
        out = []
        for i, (_, k) in enumerate(pairs):
            h = heat[i].astype(np.float32) if maps.normalized else unit_scale(heat[i])
            reason = maps.reasons[i] if maps.reasons is not None else ""
            if not reason and (hint := self.empty_hint()) and h.max() <= 0:
                reason = f"{heatmap_problem(h)}{hint}"
            extra = maps.settings[i] if maps.settings is not None else {}
            out.append(Localization(h, self.method, float(scores[i]),
                                    {**own, **extra, "selector": selector.single(k).describe()}, seconds, str(device),
                                    int(steps[i]), "empty" if reason else "ok", reason))
        return out
