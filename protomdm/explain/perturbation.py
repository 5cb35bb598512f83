"""How a mask is applied to an image: one object shared by MDM, RISE, extremal perturbation and the faithfulness
metrics (deletion/insertion, Average Drop).

A mask ``m`` in [0, 1] keeps the image where it is 1 and replaces it by a *baseline* where it is 0:
``m * x + (1 - m) * b``, all in the model's input space. The baselines:

- ``zero``: zeros, i.e. the normalisation mean (a neutral grey), as in the MDM paper and RISE's ``I * M``;
- ``blur``: the image under a Gaussian blur of ``blur_sigma`` input pixels (extremal perturbation's choice);
- ``mean``: each channel's mean over the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import BASELINES
from ..errors import UserError

MIN_EFFECT = 1e-3  # masking everything must move the activation by this share of its size (at least 1e-3 of 1)


def masking_effect(target: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``||f(X) - f(B)||^2`` per task for activations ``(T, ...)`` on the images and on the baselines, and whether
    it is too small for the activation to depend on the image (below :data:`MIN_EFFECT` of the activation's size)."""
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    effect = ((flat(target) - flat(masked)) ** 2).sum(1)
    size = flat(target).norm(dim=1).clamp_min(1e-3)
    return effect, effect.sqrt() <= MIN_EFFECT * size


def independence_reason(effect: float, target: torch.Tensor) -> str:
    """The ``empty`` status's reason for a target that masking the whole image does not move (``effect`` being
    ``||f(X) - f(B)||^2``)."""
    return (f"the explained activation does not depend on the image: masking all of it moves it by {effect ** 0.5:.2g} "
            f"(of {float(target.float().norm()):.3g}); explain another prototype or class, or mask with another "
            "baseline (blur)")


def unmoved_reasons(target: torch.Tensor, masked: torch.Tensor) -> list[str]:
    """Per task, the ``empty`` status's reason when masking the whole image does not move the activation
    (``target``/``masked``: ``(T, ...)`` on the images and on their baselines), else ``""``."""
    effect, independent = masking_effect(target.reshape(len(target), -1), masked.reshape(len(masked), -1))
    return [independence_reason(float(e), t) if bool(ind) else "" for e, ind, t in zip(effect, independent, target)]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``x: (B, C, H, W)`` with reflect padding (torchvision's), the kernel reaching 3 sigma, cut
    to the image on tiny images (reflect padding needs a radius below the side)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    ry, rx = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    if rx < 1 or ry < 1:
        return x
    import torchvision.transforms.functional as TF  # here: importing torchvision takes 1.7 s (it loads TorchDynamo)

    return TF.gaussian_blur(x, [2 * rx + 1, 2 * ry + 1], [sigma, sigma])


@dataclass(frozen=True)
class Perturbation:
    """A masking baseline and how a mask blends it with the image.

    Example:
        >>> pert = Perturbation("blur", blur_sigma=10)
        >>> b = pert.baseline(x)                 # (B, C, H, W)
        >>> xm = pert.apply(x, masks, b)         # masks (N, H, W) or (N, 1, H, W) -> (N, C, H, W)
    """

    kind: str = "zero"
    blur_sigma: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in BASELINES:
            raise UserError(f"unknown baseline {self.kind!r}; choose one of {', '.join(BASELINES)}")
        if not self.blur_sigma > 0:
            raise UserError(f"blur sigma must be > 0, got {self.blur_sigma}")

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        """What masked-out pixels become, for ``x: (B, C, H, W)``."""
        if self.kind == "zero":
            return torch.zeros_like(x)
        if self.kind == "mean":
            return x.mean((2, 3), keepdim=True).expand_as(x)
        return gaussian_blur(x, self.blur_sigma)

    @staticmethod
    def apply(x: torch.Tensor, masks: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        """``m * x + (1 - m) * b`` for masks ``(N, H, W)`` or ``(N, 1, H, W)`` (float in [0, 1], or bool) and
        ``x``, ``baseline`` of shape ``(C, H, W)``, ``(1, C, H, W)`` or ``(N, C, H, W)``: ``(N, C, H, W)``."""
        m = masks[:, None] if masks.dim() == 3 else masks
        if m.dtype == torch.bool:
            return torch.where(m, x, baseline)
        return Perturbation.blend(m, baseline, x - baseline)

    @staticmethod
    def blend(masks: torch.Tensor, baseline: torch.Tensor, difference: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` given ``difference = x - baseline``, which a search computes once for all its passes:
        ``b + m * (x - b)`` in one fused operation (``torch.addcmul``; ``m * x + (1 - m) * b`` costs four and
        their gradients, a tenth of an MDM pass of the demo model). Where only the mask needs a gradient, that is
        one product and one sum over the channels (autograd's addcmul also scales ``x - b`` by its ``value``)."""
        m = masks[:, None] if masks.dim() == 3 else masks
        mask_only = not (baseline.requires_grad or difference.requires_grad)
        if mask_only and m.requires_grad and m.dim() == 4 and m.shape[1] == 1 and len(m) == len(difference):
            return _MaskBlend.apply(m, baseline, difference)
        return torch.addcmul(baseline, m, difference)


class _MaskBlend(torch.autograd.Function):
    """``b + m * d`` differentiated to the mask ``m (N, 1, H, W)`` only."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(d)
        return torch.addcmul(b, m, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """``sum_c grad_c * d_c``, ``(N, 1, H, W)``: one fused multiply-add per channel, which reads the channels
        as strided planes (``(grad * d).sum(1)`` took 2.4x the time on channels-last images, whose channels are
        the innermost dimension: 262 against 108 us for 27 images of 3 x 64 x 64 on the 2-core CPU)."""
        (d,) = ctx.saved_tensors
        out = grad[:, :1] * d[:, :1]
        for c in range(1, grad.shape[1]):
            out.addcmul_(grad[:, c:c + 1], d[:, c:c + 1])
        return out, None, None
