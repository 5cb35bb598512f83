"""Attribution maps as localizations: plain saliency and SmoothGrad (Captum), and prototype relevance propagation
(:mod:`protomdm.explain.prp`, zennit) share one post-processing, CaBRNet's for prototype patches: the attribution's
polarity (absolute by default), its mean over the colour channels, then a Gaussian blur (CaBRNet's
``gaussian_filter(sigma=5)`` at 224 px; here scaled with the input's side, ``reference_size``).

Saliency (Simonyan et al. 2014) is the gradient of the explained activation with respect to the input; SmoothGrad
(Smilkov et al. 2017) averages it over ``samples`` copies of the image with Gaussian noise of standard deviation
``noise_ratio`` times the image's value range, as CaBRNet and Xu-Darme et al. (2023) use it for prototypes. The
explained activation is the selector's (a prototype's pooled score: the gradient flows through its most similar
location, CaBRNet's ``location="max"``; a logit).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..config import check_finite, require
from ..errors import UserError
from .localization import Localizer, Maps, Pair
from .registry import register_localizer
from .selectors import Selector, SelectorScores

POLARITIES = ("absolute", "positive", "negative", "signed")


def import_captum():
    """The ``captum.attr`` module, or a one-line error naming the extra to install."""
    try:
        import captum.attr
    except ImportError:
        raise UserError("saliency and SmoothGrad need Captum: pip install 'protomdm[attribution]'") from None
    return captum.attr


@dataclass
class AttributionConfig:
    """CaBRNet's post-processing of an attribution ``(C, H, W)`` into a heatmap ``(H, W)``."""

    polarity: str = "absolute"  # absolute | positive | negative | signed (kept as it is)
    blur_sigma: float = 5.0  # Gaussian blur in input pixels at reference_size; 0: none
    reference_size: int | None = 224  # blur_sigma scales with min(H, W) / reference_size; None: pixels as given
    batch: int = 16  # images per forward/backward pass

    def __post_init__(self) -> None:
        check_finite(self)
        require(self.polarity in POLARITIES, f"polarity must be one of {POLARITIES}, got {self.polarity!r}")
        require(self.blur_sigma >= 0, f"blur_sigma must be >= 0, got {self.blur_sigma}")
        require(self.reference_size is None or self.reference_size > 0, "reference_size must be > 0 or null")
        require(self.batch >= 1, f"batch must be >= 1, got {self.batch}")


@dataclass
class SmoothGradConfig(AttributionConfig):
    """SmoothGrad's settings (defaults: CaBRNet's)."""

    samples: int = 10  # noisy copies per image
    noise_ratio: float = 0.2  # noise standard deviation over the image's value range (max - min)
    seed: int = 0  # the noise is reproducible

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.samples >= 1, f"samples must be >= 1, got {self.samples}")
        require(self.noise_ratio > 0, f"noise_ratio must be > 0, got {self.noise_ratio}")


def attribution_heatmaps(attr: torch.Tensor, config: AttributionConfig) -> torch.Tensor:
    """``(P, C, H, W)`` attributions -> ``(P, H, W)`` heatmaps: polarity, channel mean, Gaussian blur."""
    if config.polarity == "absolute":
        attr = attr.abs()
    elif config.polarity == "positive":
        attr = attr.clamp_min(0)
    elif config.polarity == "negative":
        attr = (-attr).clamp_min(0)
    heat = attr.float().mean(1, keepdim=True)
    h, w = heat.shape[-2:]
    sigma = config.blur_sigma * (1.0 if config.reference_size is None else min(h, w) / config.reference_size)
    if sigma > 0:
        radius = min(int(math.ceil(4 * sigma)), min(h, w) - 1)  # scipy's truncate=4, within reflect padding
        if radius >= 1:
            import torchvision.transforms.functional as TF  # here: importing torchvision takes 1.7 s

            heat = TF.gaussian_blur(heat, [2 * radius + 1] * 2, [sigma] * 2)
    return heat[:, 0]


class AttributionLocalizer(Localizer):
    """Base of the attribution methods: :meth:`attribute` gives ``(P, C, H, W)`` for the pairs' images and
    targets, and :func:`attribution_heatmaps` post-processes it."""

    config: AttributionConfig
    settings_class: type = AttributionConfig

    def __init__(self, config: AttributionConfig | None = None, progress: bool = False, **overrides) -> None:
        self.config = dataclasses.replace(config or self.settings_class(), **overrides)
        self.progress = progress
        self.check_available()  # a missing package is said before any work starts

    def check_available(self) -> None:
        """Raise a :class:`UserError` naming the extra to install when the library it stands on is missing."""
        import_captum()

    def attribute(self, x: torch.Tensor, selector: Selector, targets: list[int]) -> torch.Tensor:
        """Attributions ``(n, C, H, W)`` of target ``targets[i]`` in image ``x[i]`` of ``(n, C, H, W)``."""
        raise NotImplementedError

    def compute_maps(self, x: torch.Tensor, selector: Selector, pairs: list[Pair]) -> Maps:
        chunks = []
        for i in range(0, len(pairs), self.config.batch):
            part = pairs[i:i + self.config.batch]
            rows = torch.tensor([b for b, _ in part], device=x.device)
            attr = self.attribute(x[rows], selector, [k for _, k in part])
            chunks.append(attribution_heatmaps(attr.detach(), self.config))
        return Maps(torch.cat(chunks))


@register_localizer("saliency", settings=AttributionConfig)
class SaliencyLocalizer(AttributionLocalizer):
    """Saliency: the gradient of the explained activation with respect to the input (Captum's ``Saliency``)."""

    method = "saliency"
    settings_class = AttributionConfig

    def attribute(self, x: torch.Tensor, selector: Selector, targets: list[int]) -> torch.Tensor:
        attr = import_captum()
        return attr.Saliency(SelectorScores(selector)).attribute(x.detach().clone().requires_grad_(True),
                                                                 target=targets, abs=False)


@register_localizer("smoothgrad", settings=SmoothGradConfig)
class SmoothGradLocalizer(AttributionLocalizer):
    """SmoothGrad: saliency averaged over noisy copies of the image (Captum's ``NoiseTunnel``)."""

    method = "smoothgrad"
    settings_class = SmoothGradConfig
    config: SmoothGradConfig

    def attribute(self, x: torch.Tensor, selector: Selector, targets: list[int]) -> torch.Tensor:
        attr = import_captum()
        cfg = self.config
        tunnel = attr.NoiseTunnel(attr.Saliency(SelectorScores(selector)))
        out = []
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            for i in range(len(x)):  # the noise's scale is each image's own value range
                torch.manual_seed(cfg.seed)  # the same noise whichever images share the batch
                xi = x[i:i + 1].detach().clone().requires_grad_(True)
                stdev = float((xi.max() - xi.min()).detach() * cfg.noise_ratio)
                out.append(tunnel.attribute(xi, nt_type="smoothgrad", nt_samples=cfg.samples,
                                            nt_samples_batch_size=cfg.batch, stdevs=stdev, target=targets[i],
                                            abs=False))
        return torch.cat(out)
