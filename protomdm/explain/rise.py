"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das and Saenko, BMVC 2018), written from the paper.

``N`` random masks are drawn: a ``s x s`` grid of cells, each kept with probability ``p``, upsampled bilinearly to
``(s + 1)`` cells of ``ceil(H / s)`` pixels and cropped at a random shift, so that the masks are smooth and not
aligned to one grid. The saliency of pixel ``u`` is the expected activation given that ``u`` is kept,

    S(u) = 1 / (N p) * sum_i f(m_i * x + (1 - m_i) * b) m_i(u),

scaled to [0, 1] for the heatmap. The paper's defaults: ``N = 4000``, ``s = 7``, ``p = 0.5``, masked pixels set to
zero (here: the ``zero`` baseline, the normalisation mean). The same masks serve every image and target, as in the
paper, and every image and target of a batch is scored on each masked batch at once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import BASELINES, check_finite, require
from .localization import Localization, Localizer, eval_mode, model_device
from .perturbation import Perturbation, independence_reason, masking_effect
from .registry import register_localizer
from .selectors import Selector


@dataclass
class RISEConfig:
    """Settings of RISE (defaults: the paper's for ImageNet classifiers)."""

    masks: int = 4000  # N, the random masks drawn
    cells: int = 7  # s, the grid of each mask before upsampling
    p_keep: float = 0.5  # the probability that a cell is kept
    baseline: str = "zero"  # what masked-out pixels become (see protomdm.explain.perturbation)
    blur_sigma: float = 10.0
    batch: int = 100  # masks per forward pass (each applied to every image localized together)
    seed: int = 0  # the masks are reproducible

    def __post_init__(self) -> None:
        check_finite(self)
        require(self.masks >= 1, f"masks must be >= 1, got {self.masks}")
        require(self.cells >= 1, f"cells must be >= 1, got {self.cells}")
        require(0 < self.p_keep < 1, f"p_keep must lie strictly between 0 and 1, got {self.p_keep}")
        require(self.baseline in BASELINES, f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        require(self.batch >= 1, f"batch must be >= 1, got {self.batch}")


def rise_masks(n: int, size: tuple[int, int], cells: int, p_keep: float, generator: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` RISE masks ``(n, H, W)`` in [0, 1]: random ``cells x cells`` binary grids, upsampled bilinearly to
    ``cells + 1`` cells and cropped at a random shift of up to one cell."""
    h, w = size
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    grid = (torch.rand(n, 1, cells, cells, generator=generator) < p_keep).float()
    up = F.interpolate(grid.to(device), size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = torch.randint(0, ch, (n,), generator=generator).tolist()
    dx = torch.randint(0, cw, (n,), generator=generator).tolist()
    return torch.stack([up[i, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx))])


@register_localizer("rise", settings=RISEConfig)
class RISELocalizer(Localizer):
    """RISE (random masks weighted by the activation they keep); see the module docstring.

    Example:
        >>> loc = RISELocalizer(masks=1000).localize(x, LogitSelector(model, 3))
    """

    def __init__(self, config: RISEConfig | None = None, progress: bool = False, **overrides) -> None:
        self.config = dataclasses.replace(config or RISEConfig(), **overrides)
        self.progress = progress

    def localize_pairs(self, images: torch.Tensor, selector: Selector, pairs: list[tuple[int, int]]
                       ) -> list[Localization]:
        """Target ``k`` in image ``b`` for every ``(b, k)`` of ``pairs``: the images in one pass over the masks."""
        used = sorted({b for b, _ in pairs})
        res = self.localize_many(images[used], selector)
        out = [res[used.index(b)][k] for b, k in pairs]
        for loc in out:  # the pass served every target of every image: share its time among those asked for
            loc.seconds *= len(used) * selector.num_targets / len(pairs)
        return out

    def localize_many(self, images: torch.Tensor, selector: Selector) -> list[list[Localization]]:
        """``result[b][k]`` for every image of ``images: (B, C, H, W)`` and target ``k`` of ``selector``."""
        cfg = self.config
        device = model_device(selector.model)
        x = images.to(device)
        n_img, k = x.shape[0], selector.num_targets
        h, w = x.shape[-2:]
        gen = torch.Generator().manual_seed(cfg.seed)
        pert = Perturbation(cfg.baseline, cfg.blur_sigma)
        t0 = time.perf_counter()
        with eval_mode(selector.model), torch.no_grad():
            base = pert.baseline(x)
            both = selector.targets(torch.cat([x, base])).float()
            score = lambda t: t.reshape(*t.shape[:2], -1).mean(2)  # (B, K): a map's mean  # noqa: E731
            target, masked = score(both[:n_img]), score(both[n_img:])
            effect, independent = masking_effect(target.reshape(-1, 1), masked.reshape(-1, 1))
            sal = torch.zeros(n_img, k, h, w, device=device)
            per_pass = cfg.batch  # the same draws whatever the number of images: the same masks
            bar = tqdm(total=cfg.masks, disable=not self.progress, desc="RISE", unit="mask", leave=False)
            for start in range(0, cfg.masks, per_pass):
                m = rise_masks(min(per_pass, cfg.masks - start), (h, w), cfg.cells, cfg.p_keep, gen, device)
                xm = Perturbation.apply(x[:, None], m[None, :, None], base[:, None])  # (B, n, C, H, W)
                s = score(selector.targets(xm.flatten(0, 1)).float()).view(n_img, len(m), k)
                sal += torch.einsum("bnk,nhw->bkhw", s, m)
                bar.update(len(m))
            bar.close()
        sal = (sal / (cfg.masks * cfg.p_keep)).cpu().numpy()
        seconds = (time.perf_counter() - t0) / (n_img * k)
        out = []
        for b in range(n_img):
            row = []
            for j in range(k):
                t = b * k + j
                s = sal[b, j].astype(np.float64)
                lo, hi = s.min(), s.max()
                heat = ((s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)).astype(np.float32)
                empty = bool(independent[t])
                row.append(Localization(
                    heat, "rise", float(target[b, j]), {**dataclasses.asdict(cfg), "selector": selector.single(j).describe()},
                    seconds, str(device), status="empty" if empty else "ok",
                    reason=independence_reason(float(effect[t]), target[b, j:j + 1]) if empty else ""))
            out.append(row)
        return out
