"""Extremal perturbation (Fong, Patrick and Vedaldi, ICCV 2019), written from the paper.

For each area ``a`` the mask ``m_a`` of that area that best *preserves* the explained activation is learned:

    m_a = argmax_m  f(m * x + (1 - m) * b) - lambda * ||vecsort(m) - r_a||^2

``vecsort`` sorts the mask's values and ``r_a`` is the sorted vector of a mask of exactly area ``a`` (``(1 - a) HW``
zeros, then ``a HW`` ones): the constraint fixes the mask's area without saying where it lies. The mask is smooth by
construction: a coarse parameter grid ``p`` (one cell every ``stride`` pixels) is turned into the mask by a Gaussian
max-convolution, ``m(u) = max_v k(u - v) p(v)``, so that it can reach 1 over whole blobs without holes. The
baseline ``b`` is the image blurred (the paper's blur perturbation, here with one blur level).

The heatmap is the mean of the masks over the areas: pixels kept even at the smallest area score highest.

Settings follow the paper's ImageNet set-up (at 224 pixels: a parameter cell every 7 pixels, a smoothing kernel of
sigma 21 pixels, blur sigma 20, 800 iterations), scaled to the input's size. Where this departs from the authors'
implementation (TorchRay 1.0.0.2, ``torchray.attribution.extremal_perturbation``), and why:

- The activation is normalised by its drop under the full baseline, ``(f(x_m) - f(b)) / (f(x) - f(b))``, so one
  constraint weight serves every activation scale (as MDM's normalised loss does); TorchRay uses the raw activation.
- The optimiser is Adam at step 0.01 (TorchRay: SGD, momentum 0.9, on the raw activation, whose gradient scale
  differs by orders of magnitude between models).
- The constraint weight starts at 10 and grows by TorchRay's factor 1.0035 per step (to 164 at step 800). TorchRay
  starts at 300, but against the raw activation and on a mask padded by a margin of ``sigma`` that counts in the area
  (so its masks cover up to twice their nominal area inside a small image). Started at 300 against the normalised
  activation, the constraint's gradient is some 40 times the activation's in every parameter cell: Adam then places
  the mask where the sort breaks ties at the first step, not on the evidence. Measured on an oracle whose evidence is
  the texture in a 32 x 32 box of a 96 x 96 noise image (IoU of the top-10% map with the box): 300 fixed 0.04,
  10 growing 0.83, TorchRay (``jitter=False``) 0.82 (tests/test_reference_agreement.py).
- The mask is the Gaussian max-convolution of the paper (TorchRay: a flat-topped kernel and a softmax pooling), the
  perturbation one blur level (TorchRay: a pyramid of 8).
- ``jitter`` (off by default; TorchRay's default is on) flips the perturbed input left-right at every other step,
  which only a model that does not mind mirror images forgives: on the texture oracle TorchRay's mask then lands on
  the box's mirror image (IoU 0.00).
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

REFERENCE_SIZE = 224  # the input size the pixel settings are given for; they scale with the input


@dataclass
class ExtremalConfig:
    """Settings of extremal perturbation (pixel sizes at 224 pixels, scaled to the input)."""

    areas: tuple[float, ...] = (0.05, 0.1, 0.2)  # the mask areas learned (fractions of the image)
    steps: int = 800
    lr: float = 0.01  # Adam, on the parameter grid (values in [0, 1]); the paper's step size
    lambda_area: float = 10.0  # weight of the area constraint (mean squared error of the sorted mask) at step 0...
    lambda_growth: float = 1.0035  # ...multiplied by this at every step (TorchRay's annealing)
    jitter: bool = False  # TorchRay's: flip the perturbed input left-right at every other step (see the docstring)
    stride: float = 7.0  # pixels between parameter cells
    sigma: float = 21.0  # the smoothing kernel's sigma, pixels
    baseline: str = "blur"
    blur_sigma: float = 20.0

    def __post_init__(self) -> None:
        self.areas = tuple(self.areas)
        check_finite(self)
        require(len(self.areas) >= 1 and all(0 < a < 1 for a in self.areas),
                f"areas must be fractions strictly between 0 and 1, got {self.areas}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.lr > 0 and self.lambda_area >= 0 and self.lambda_growth > 0,
                "lr must be > 0, lambda_area >= 0 and lambda_growth > 0")
        require(self.stride > 0 and self.sigma > 0 and self.blur_sigma > 0, "stride, sigma and blur_sigma must be > 0")
        require(self.baseline in BASELINES, f"baseline must be one of {BASELINES}, got {self.baseline!r}")


class SmoothMask(torch.nn.Module):
    """``m(u) = max_v k(u - v) p(v)``: parameters ``p (T, 1, g_h, g_w)`` one every ``stride`` pixels, a Gaussian
    ``k`` of ``sigma`` pixels (truncated at 3 sigma), masks ``(T, H, W)``.

    The Gaussian is a product of one kernel along y and one along x and every factor is >= 0, so the max over the
    2-D neighbourhood is a max along x, then along y: 2 (2r + 1) products per pixel instead of (2r + 1)^2.
    """

    def __init__(self, size: tuple[int, int], stride: int, sigma: float) -> None:
        super().__init__()
        h, w = size
        self.size, self.stride = size, stride
        self.grid = (math.ceil(h / stride) + 1, math.ceil(w / stride) + 1)
        r = max(1, math.ceil(3 * sigma / stride))
        self.radius = r
        # the weight of the neighbour at grid offset o - r for the pixel at offset q inside its cell: (s, 2r+1)
        off = torch.arange(-r, r + 1, dtype=torch.float32)
        sub = torch.arange(stride, dtype=torch.float32)
        self.register_buffer("kernel", torch.exp(-(off[None, :] * stride - sub[:, None]) ** 2 / (2 * sigma**2)))

    def _along_x(self, p: torch.Tensor) -> torch.Tensor:
        """``(T, 1, a, g)`` -> ``(T, 1, a, g * s)``: the max-convolution along the last axis, zero outside."""
        t, _, a, g = p.shape
        r, s = self.radius, self.stride
        cols = F.unfold(F.pad(p, (r, r)), (1, 2 * r + 1)).view(t, 1, 2 * r + 1, a * g)
        out = (self.kernel[None, :, :, None] * cols).amax(2)  # (T, s, a * g)
        return out.view(t, s, a, g).permute(0, 2, 3, 1).reshape(t, 1, a, g * s)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        m = self._along_x(self._along_x(p).transpose(2, 3)).transpose(2, 3)  # along x, then along y
        return m[:, 0, :self.size[0], :self.size[1]]


def area_profile(n: int, area: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``r_a``: the sorted values (ascending) of a mask of ``n`` pixels and area ``area``."""
    r = torch.zeros(n, device=device)
    r[n - round(area * n):] = 1
    return r


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

    def localize_many(self, images: torch.Tensor, selector: Selector) -> list[list[Localization]]:
        """``result[b][k]`` for every image of ``images: (B, C, H, W)`` and target ``k`` of ``selector``."""
        k = selector.num_targets
        flat = self.localize_pairs(images, selector, [(b, j) for b in range(images.shape[0]) for j in range(k)])
        return [flat[b * k:(b + 1) * k] for b in range(images.shape[0])]

    def localize_pairs(self, images: torch.Tensor, selector: Selector, pairs: list[tuple[int, int]]
                       ) -> list[Localization]:
        """Target ``k`` of ``selector`` in image ``b`` for every ``(b, k)`` of ``pairs``: every (pair, area) mask is
        learned in one batch."""
        cfg = self.config
        device = model_device(selector.model)
        x = images.to(device)
        n_area, h, w = len(cfg.areas), *x.shape[-2:]
        scale = min(h, w) / REFERENCE_SIZE
        pert = Perturbation(cfg.baseline, max(cfg.blur_sigma * scale, 0.5))
        smooth = SmoothMask((h, w), max(1, round(cfg.stride * scale)), max(cfg.sigma * scale, 0.5)).to(device)
        score = lambda t: t.reshape(*t.shape[:2], -1).mean(2)  # (B, K): a map's mean  # noqa: E731
        pair_img, pair_tgt = torch.tensor(pairs, dtype=torch.long, device=device).view(-1, 2).unbind(1)
        t0 = time.perf_counter()
        with eval_mode(selector.model):
            base = pert.baseline(x)
            with torch.no_grad():
                both = score(selector.targets(torch.cat([x, base])).float())
                target, masked = both[:len(x)][pair_img, pair_tgt], both[len(x):][pair_img, pair_tgt]  # (P,)
                effect, independent = masking_effect(target[:, None], masked[:, None])
            drop = target - masked
            drop = torch.where(drop.abs() > 0, drop, torch.ones_like(drop))
            task = torch.arange(len(pairs), device=device).repeat_interleave(n_area)  # (P * A,): pair-major
            img, tgt = pair_img[task], pair_tgt[task]
            profile = torch.stack([area_profile(h * w, a, device) for a in cfg.areas]).repeat(len(pairs), 1)
            p = torch.full((len(task), 1, *smooth.grid), 0.5, device=device, requires_grad=True)
            opt = torch.optim.Adam([p], lr=cfg.lr)
            bar = tqdm(total=cfg.steps, disable=not self.progress, desc="extremal perturbation", unit="step",
                       leave=False)
            for step in range(cfg.steps):
                m = smooth(p)  # (P * A, H, W)
                perturbed = Perturbation.apply(x[img], m, base[img])
                if cfg.jitter and step % 2 == 0:
                    perturbed = perturbed.flip(-1)
                out = score(selector.targets(perturbed).float())
                reward = (out[torch.arange(len(task), device=device), tgt] - masked[task]) / drop[task]
                area = ((m.flatten(1).sort(1).values - profile) ** 2).mean(1)
                loss = (-reward + cfg.lambda_area * cfg.lambda_growth ** step * area).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    p.clamp_(0, 1)
                bar.update()
            bar.close()
            with torch.no_grad():
                heat = smooth(p).view(len(pairs), n_area, h, w).mean(1).cpu().numpy()
        seconds = (time.perf_counter() - t0) / len(pairs)
        out = []
        for i, (_, k) in enumerate(pairs):
            empty = bool(independent[i])
            out.append(Localization(
                heat[i].astype(np.float32), "extremal", float(target[i]),
                {**dataclasses.asdict(cfg), "selector": selector.single(k).describe()}, seconds, str(device),
                steps=cfg.steps, status="empty" if empty else "ok",
                reason=independence_reason(float(effect[i]), target[i:i + 1]) if empty else ""))
        return out
