"""Extremal perturbation (Fong, Patrick and Vedaldi, ICCV 2019), the algorithm of the authors' implementation.

For each area ``a`` the mask ``m_a`` of that area that best *preserves* the explained activation is learned:

    m_a = argmax_m  f(perturb(x, m)) - lambda_t * ||vecsort(m) - r_a||^2

``vecsort`` sorts the mask's values and ``r_a`` is the sorted vector of a mask of exactly area ``a`` (zeros, then
``a`` of ones): the constraint fixes the mask's area without saying where it lies; its weight ``lambda_t`` grows
geometrically during the search. The heatmap is the mean of the masks over the areas: pixels kept even at the
smallest area score highest.

The search is the one of TorchRay 1.0.0.2 (``torchray.attribution.extremal_perturbation``, the authors' code),
written here from its equations, so that the same image, model and settings give the same masks (agreement measured
in tests/explain/test_reference_agreement.py and the README):

- **Smooth masks** (:class:`SmoothMask`): a parameter grid ``p`` (one cell every ``stride`` pixels, values in
  [0, 1]) becomes the mask by a *smooth max* over the cells around each pixel, ``m(u) = sum_v w_v softmax_v(20 w_v)``
  with ``w_v = k(|u - c_v| / sigma) p(v)`` and the flat-topped kernel ``k(z) = exp(-2 max(z - 1/2, 0)^2)``. The mask
  extends beyond the image (``sigma`` pixels before it, up to ``sigma`` after) and the area constraint counts that
  margin.
- **Blur pyramid**: the perturbed image interpolates linearly between 8 levels of Gaussian blur, from ``blur_sigma``
  (mask 0) down to the image itself (mask 1); the blur pads with zeros and reaches 4 sigma. With ``baseline: zero``
  or ``mean`` the perturbation is the plain blend ``m x + (1 - m) b`` (a pyramid of linear levels is the same).
- **Optimiser**: SGD at step 0.01, momentum 0.9 (dampening 0.9), on the activation's spatial mean, parameters
  clamped to [0, 1] after each step; the constraint weight starts at 300 and grows by 1.0035 per step.

The settings are TorchRay's defaults (a parameter cell every 7 pixels, sigma 21, blur 20, 800 steps), given for a
224-pixel input. TorchRay keeps them in pixels at every size, so on a 64-pixel image its blur is a flat grey and its
smallest mask a blob of a tenth of the image. Here they scale with the input's shorter side (``reference_size``),
but not below half (``min_scale``): scaled fully to a 96-pixel texture oracle (issue 30: a 32 x 32 box in noise;
IoU of the top-10% map with the box) it found less of the box (0.69, against 0.82 at half scale and
0.82 in pixels), and on the demo's 64-pixel test images (12; p90 Dice with the planted object) half scale gave 0.150,
full scaling 0.137 and TorchRay's pixels 0.051 (24 images). ``reference_size: null`` keeps them in pixels, as
TorchRay does.

Where this departs from TorchRay, and why:

- Every (image, target, area) mask of a search is learned in one batch; the activation is any selector's (a
  prototype's score or similarity map, a logit), its spatial mean as TorchRay's reward.
- ``normalize_reward`` (off by default) divides the activation's gain by its drop under the full perturbation,
  ``(f(x_m) - f(b)) / (f(x) - f(b))``, for activations whose range is far from a logit's (the constraint weight of
  300 assumes a logit's scale); then ``lambda_area`` about 10 serves.
- ``jitter`` (off by default; TorchRay's default is on) flips the perturbed input left-right at every other step,
  which only a model that does not mind mirror images forgives: on the texture oracle TorchRay's mask then lands on
  the box's mirror image (IoU 0.00).

Every piece of the search matters for the top-10% map. On the synthetic-data CNN (64 pixels), replacing any one of
them (a Gaussian max-convolution for the smooth max, Adam for SGD, one blur level for the pyramid, the normalised
reward) moved the map to a mean IoU of 0.45-0.69 with TorchRay's; so did a weight tensor laid out channels-last,
whose different summation order decides, in the last bit, which mask values the clamp at 1 cuts off from the
gradient. Computed as here, the masks agree with TorchRay's to 1e-3 and the top-10% maps to IoU 1.00.
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
class ExtremalConfig:
    """Settings of extremal perturbation (TorchRay's defaults; pixel sizes for a ``reference_size`` input, scaled to
    the input's shorter side but not below ``min_scale`` of them)."""

    areas: tuple[float, ...] = (0.05, 0.1, 0.2)  # the mask areas learned (fractions of the image)
    steps: int = 800
    lr: float = 0.01  # SGD on the parameter grid (values in [0, 1])...
    momentum: float = 0.9  # ...with this momentum (and the same dampening)
    lambda_area: float = 300.0  # weight of the area constraint (mean squared error of the sorted mask) at step 0...
    lambda_growth: float = 1.0035  # ...multiplied by this at every step
    normalize_reward: bool = False  # the gain over the full perturbation, divided by f(x) - f(b) (see the docstring)
    jitter: bool = False  # TorchRay's: flip the perturbed input left-right at every other step (see the docstring)
    stride: float = 7.0  # pixels between parameter cells (rounded once scaled)
    sigma: float = 21.0  # the smooth max's radius (and the mask's margin), pixels
    baseline: str = "blur"
    blur_sigma: float = 20.0  # the strongest blur, pixels
    levels: int = 8  # blur levels from blur_sigma to none
    reference_size: int | None = 224  # the input side stride, sigma and blur_sigma are for; None: pixels at any size
    min_scale: float = 0.5  # scaled to a smaller input, never below this share of them (see the module docstring)

    def __post_init__(self) -> None:
        self.areas = tuple(self.areas)
        check_finite(self)
        require(len(self.areas) >= 1 and all(0 < a < 1 for a in self.areas),
                f"areas must be fractions strictly between 0 and 1, got {self.areas}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.lr > 0 and 0 <= self.momentum < 1 and self.lambda_area >= 0 and self.lambda_growth > 0,
                "lr must be > 0, momentum in [0, 1), lambda_area >= 0 and lambda_growth > 0")
        require(self.stride > 0, f"stride must be > 0, got {self.stride}")
        require(self.sigma > 0 and self.blur_sigma > 0, "sigma and blur_sigma must be > 0")
        require(self.levels >= 2, f"levels must be >= 2, got {self.levels}")
        require(self.reference_size is None or self.reference_size >= 1, "reference_size must be >= 1 or null")
        require(0 < self.min_scale, f"min_scale must be > 0, got {self.min_scale}")
        require(self.baseline in BASELINES, f"baseline must be one of {BASELINES}, got {self.baseline!r}")


class SmoothMask(torch.nn.Module):
    """Masks ``(T, H, W)`` from parameters ``(T, 1, g_h, g_w)`` (one cell every ``stride`` pixels): the smooth max
    ``m(u) = sum_v w_v softmax_v(coldness w_v)``, ``w_v = k(|u - c_v| / sigma) p(v)``, over the ``(2r + 1)^2``
    cells ``v`` around ``u``, with the flat-topped kernel ``k(z) = exp(-2 max(z - 1/2, 0)^2)``, clamped to [0, 1].

    The mask is computed on the image grown by a margin (``sigma`` pixels before it, up to ``sigma`` after:
    :attr:`full`, what the area constraint counts); cell ``(i, j)`` is centred on image pixel ``(stride i, stride j)``.
    """

    weight: torch.Tensor  # (1, K, h, w) kernel weights of the cells around each pixel, a buffer

    def __init__(self, size: tuple[int, int], stride: int, sigma: float, coldness: float = 20.0) -> None:
        super().__init__()
        self.size, self.stride, self.sigma, self.coldness = size, stride, sigma, coldness
        self.grid = tuple(math.ceil(s / stride) for s in size)
        self.pad = 1 + math.ceil(2 * sigma / stride)  # zero cells around the grid: enough for the margin
        self.radius = 1 + math.ceil(sigma / stride)
        self.blocks = blocks = [g + 2 * (self.pad - self.radius) for g in self.grid]  # windows along each axis
        self.full = tuple(stride * b - stride + 1 for b in blocks)  # the mask's size with its margin
        self.crop = round(sigma)
        # each output pixel's window, as nearest-neighbour upsampling (float32, as torch's) indexes it
        index = [torch.floor(torch.arange(n, dtype=torch.float32) * (torch.tensor(b, dtype=torch.float32)
                                                                     / torch.tensor(stride * b, dtype=torch.float32))
                             ).long() for n, b in zip(self.full, blocks)]
        k = torch.arange(2 * self.radius + 1)
        # distance from output pixel u to the centre of the window's cell k, along each axis: (n, 2r + 1)
        dy, dx = (torch.arange(n, dtype=torch.float32)[:, None] - (sigma + stride * (i[:, None] + k - self.pad))
                  for n, i in zip(self.full, index))
        dist = (dy.T[:, None, :, None] ** 2 + dx.T[None, :, None, :] ** 2).sqrt()  # (2r+1, 2r+1, h, w)
        weight = torch.exp(-2 * ((dist / sigma - 0.5).clamp(min=0) ** 2))
        self.register_buffer("weight", weight.flatten(0, 1)[None].contiguous(), persistent=False)  # (1, K, h, w)

    def full_mask(self, p: torch.Tensor) -> torch.Tensor:
        """``(T, 1, g_h, g_w)`` -> ``(T, h, w)``: the mask with its margin."""
        d = 2 * self.radius + 1
        win = F.unfold(p, (d, d), padding=self.pad)  # (T, K, blocks_h * blocks_w)
        win = win.view(len(p), d * d, *self.blocks)
        win = F.interpolate(win, size=[self.stride * b for b in self.blocks], mode="nearest")
        win = F.pad(win, (0, 1 - self.stride, 0, 1 - self.stride))  # (T, K, h, w)
        v = self.weight * win  # (T, K, h, w)
        return (v * F.softmax(self.coldness * v, dim=1)).sum(1).clamp(0, 1)

    def forward(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks on the image ``(T, H, W)`` and with their margin ``(T, h, w)``."""
        full = self.full_mask(p)
        c = self.crop
        return full[:, c:c + self.size[0], c:c + self.size[1]], full


def area_profile(n: int, area: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``r_a``: the sorted values (ascending) of a mask of ``n`` pixels and area ``area``."""
    r = torch.ones(n, device=device)
    r[:int(n * (1 - area))] = 0
    return r


def blur_pyramid(x: torch.Tensor, sigma: float, levels: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, L, C, H, W)``: ``x`` blurred with sigma ``sigma (1 - l / (L - 1))`` at level ``l``
    (zero padding, kernel to 4 sigma): level 0 the strongest blur, the last level ``x`` itself."""
    out = []
    for s in torch.linspace(0, 1, levels).tolist():
        s = (1 - s) * sigma
        width = math.ceil(4 * s)
        t = torch.arange(-width, width + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t / (math.sqrt(2) * s + 1e-12)) ** 2)
        k = (k / k.sum()).expand(x.shape[1], 1, -1)
        y = F.conv2d(x, k[..., None], padding=(width, 0), groups=x.shape[1])
        out.append(F.conv2d(y, k[:, :, None], padding=(0, width), groups=x.shape[1]))
    return torch.stack(out, 1)


def pyramid_apply(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masks ``(T, H, W)`` in [0, 1] read the pyramid ``(T, L, C, H, W)`` at level ``m (L - 1)``, interpolating
    linearly between levels: ``(T, C, H, W)``."""
    n, levels, c = pyramid.shape[:3]
    pos = masks[:, None, None] * (levels - 1)
    k = pos.floor()
    frac = pos - k
    k = k.long().expand(n, 1, c, *masks.shape[1:])
    y0 = pyramid.gather(1, k)
    y1 = pyramid.gather(1, (k + 1).clamp(max=levels - 1))
    return ((1 - frac) * y0 + frac * y1)[:, 0]


# the most smooth-max values (masks x window cells x pixels) one search holds: about 0.5 GB a tensor of them, a few
# such tensors with their gradients (at 512 pixels one mask has 81 x 550^2 values)
MAX_ELEMENTS = 2**27


@register_localizer("extremal", settings=ExtremalConfig)
class ExtremalLocalizer(Localizer):
    """Extremal perturbation: the smooth masks of fixed areas that best keep the activation; see the module
    docstring.

    Example:
        >>> loc = ExtremalLocalizer(areas=(0.1,), steps=300).localize(x, PrototypeSelector(model, 3))
    """

    def __init__(self, config: ExtremalConfig | None = None, progress: bool = False, **overrides) -> None:
        self.config = dataclasses.replace(config or ExtremalConfig(), **overrides)
        self.progress = progress

    method = "extremal"

    def compute_maps(self, x: torch.Tensor, selector: Selector, pairs: list[Pair]) -> Maps:
        """The (pair, area) masks of every pair, learned in batches of at most :data:`MAX_ELEMENTS` smooth-max
        values (each pair is independent of the others, so the batches give what one batch would); a pair's map is
        the mean of its areas' masks."""
        cfg = self.config
        h, w = x.shape[-2:]
        scale = 1.0 if cfg.reference_size is None else max(min(h, w) / cfg.reference_size, cfg.min_scale)
        smooth = SmoothMask((h, w), max(1, round(cfg.stride * scale)), cfg.sigma * scale).to(x.device)
        n = max(1, MAX_ELEMENTS // (len(cfg.areas) * int(smooth.weight.numel())))
        parts = [self._search(x, selector, pairs[i:i + n], smooth, scale) for i in range(0, len(pairs), n)]
        target, masked = torch.cat([t for _, t, _ in parts]), torch.cat([m for _, _, m in parts])
        return Maps(torch.cat([heat for heat, _, _ in parts]), scores=target.tolist(), steps=cfg.steps,
                    reasons=unmoved_reasons(target, masked), normalized=True)

    def _search(self, x: torch.Tensor, selector: Selector, pairs: list[Pair], smooth: SmoothMask, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batched search of every (pair, area) mask of ``pairs``: ``(maps (P, H, W), the activation on the
        images (P,), on their baselines (P,))``."""
        cfg = self.config
        device = x.device
        n_area, h, w = len(cfg.areas), *x.shape[-2:]
        pair_img, pair_tgt = torch.tensor(pairs, dtype=torch.long, device=device).view(-1, 2).unbind(1)
        if cfg.baseline == "blur":
            pyramid = blur_pyramid(x, cfg.blur_sigma * scale, cfg.levels)  # (B, L, C, H, W)
            base = pyramid[:, 0]
        else:
            base = Perturbation(cfg.baseline).baseline(x)
        with torch.no_grad():
            both = selector.scores(torch.cat([x, base])).float()
            target, masked = both[:len(x)][pair_img, pair_tgt], both[len(x):][pair_img, pair_tgt]  # (P,)
        drop = target - masked
        drop = torch.where(drop.abs() > 0, drop, torch.ones_like(drop))
        task = torch.arange(len(pairs), device=device).repeat_interleave(n_area)  # (P * A,): pair-major
        img, tgt = pair_img[task], pair_tgt[task]
        n_full = smooth.full[0] * smooth.full[1]
        profile = torch.stack([area_profile(n_full, a, device) for a in cfg.areas]).repeat(len(pairs), 1)
        p = torch.ones((len(task), 1, *smooth.grid), device=device, requires_grad=True)
        opt = torch.optim.SGD([p], lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.momentum)
        weight = cfg.lambda_area
        bar = tqdm(total=cfg.steps, disable=not self.progress, desc="extremal perturbation", unit="step",
                   leave=False)
        for step in range(cfg.steps):
            m, full = smooth(p)  # (P * A, H, W), (P * A, h, w)
            if cfg.baseline == "blur":
                perturbed = pyramid_apply(pyramid[img], m)
            else:
                perturbed = Perturbation.apply(x[img], m, base[img])
            if cfg.jitter and step % 2 == 0:
                perturbed = perturbed.flip(-1)
            reward = selector.scores(perturbed).float()[torch.arange(len(task), device=device), tgt]
            if cfg.normalize_reward:
                reward = (reward - masked[task]) / drop[task]
            regul = -((full.flatten(1).sort(1).values - profile) ** 2).mean(1) * weight
            energy = (reward + regul).sum()  # TorchRay's arithmetic: its rounding decides what the clamp cuts
            opt.zero_grad(set_to_none=True)
            (-energy).backward()
            opt.step()
            with torch.no_grad():
                p.clamp_(0, 1)
            weight *= cfg.lambda_growth
            bar.update()
        bar.close()
        with torch.no_grad():
            heat = smooth(p)[0].view(len(pairs), n_area, h, w).mean(1)
        return heat, target, masked
