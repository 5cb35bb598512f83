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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import BASELINES, check_finite, require
from .localization import Localizer, Maps, Pair
from .perturbation import Perturbation, unmoved_reasons
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

    method = "rise"

    def compute_maps(self, x: torch.Tensor, selector: Selector, pairs: list[Pair]) -> Maps:
        """The images asked for in one pass over the masks, every target scored on each masked batch."""
        cfg = self.config
        used = sorted({b for b, _ in pairs})
        xs = x[used]
        n_img, k = xs.shape[0], selector.num_targets
        h, w = xs.shape[-2:]
        gen = torch.Generator().manual_seed(cfg.seed)
        pert = Perturbation(cfg.baseline, cfg.blur_sigma)
        with torch.no_grad():
            base = pert.baseline(xs)
            both = selector.scores(torch.cat([xs, base])).float()
            target, masked = both[:n_img], both[n_img:]
            sal = torch.zeros(n_img, k, h, w, device=x.device)
            bar = tqdm(total=cfg.masks, disable=not self.progress, desc="RISE", unit="mask", leave=False)
            for start in range(0, cfg.masks, cfg.batch):  # the same draws whatever the number of images
                m = rise_masks(min(cfg.batch, cfg.masks - start), (h, w), cfg.cells, cfg.p_keep, gen, x.device)
                xm = Perturbation.apply(xs[:, None], m[None, :, None], base[:, None])  # (B, n, C, H, W)
                s = selector.scores(xm.flatten(0, 1)).float().view(n_img, len(m), k)
                sal += torch.einsum("bnk,nhw->bkhw", s, m)
                bar.update(len(m))
            bar.close()
        rows = [(used.index(b), j) for b, j in pairs]
        i, j = torch.tensor(rows, dtype=torch.long).unbind(1)
        reasons = unmoved_reasons(target[i, j], masked[i, j])
        return Maps(sal[i, j] / (cfg.masks * cfg.p_keep), scores=target[i, j].tolist(), reasons=reasons)
