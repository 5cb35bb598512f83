"""protomdm's localizers called as Captum attributions: ``MDM(forward_func).attribute(inputs, target=...)``.

A Captum user swaps ``Occlusion(forward_func)`` or ``FeatureAblation(forward_func)`` for :class:`MDM` (or any
registered method with :class:`LocalizerAttribution`) and gets an attribution of the input's shape ``(B, C, H, W)``:
the method's heatmap in [0, 1], the same for every channel. ``forward_func`` maps ``(B, C, H, W)`` to ``(B, K)``
outputs (logits; a module, or any function of a module's inputs); ``target`` is Captum's: one index for all images,
one per image, or None when the output is ``(B,)``. The settings go to the method (``steps=``, ``lambda_l1=``...).
2D images only. Needs Captum (``pip install 'protomdm[attribution]'``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..explain import create_localizer
from ..explain.localization import Localization
from ..explain.selectors import per_image_targets

Target = int | Sequence[int] | torch.Tensor | None

try:
    from captum.attr import PerturbationAttribution
except ImportError:
    raise UserError("protomdm.integrations.captum needs Captum: pip install 'protomdm[attribution]'") from None


class _Forward(nn.Module):
    """``forward_func`` as a module (eval mode and the device reach it; a plain function runs where its inputs
    lie), its output ``(B,)`` seen as ``(B, 1)``."""

    def __init__(self, forward_func: Callable[..., torch.Tensor], device: torch.device,
                 additional_forward_args: Any = None) -> None:
        super().__init__()
        self.forward_func = forward_func
        owner = forward_func if isinstance(forward_func, nn.Module) else getattr(forward_func, "__self__", None)
        if isinstance(owner, nn.Module):  # the model, or a bound method such as model.forward
            self.module = owner
        else:
            self.register_buffer("_device", torch.empty(0, device=device))
        self.extra = () if additional_forward_args is None else (
            tuple(additional_forward_args) if isinstance(additional_forward_args, (tuple, list))
            else (additional_forward_args,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_func(x, *self.extra)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out[:, None] if out.dim() == 1 else out


class LocalizerAttribution(PerturbationAttribution):
    """Any registered protomdm localizer as a Captum attribution.

    Args:
        forward_func: the model (or a function of its inputs) returning ``(B, K)`` or ``(B,)``.
        method: a registered localizer that explains any classifier (``mdm``, ``rise``, ``extremal``, ``saliency``,
            ``smoothgrad``, a Grad-CAM name...).

    After a call, :attr:`localizations` holds the full results (status, steps, seconds, boxes).
    """

    method = "mdm"

    def __init__(self, forward_func: Callable[..., torch.Tensor], method: str | None = None) -> None:
        super().__init__(forward_func)
        self.method = method or self.method
        self.localizations: list[Localization] = []

    def attribute(self, inputs: torch.Tensor, target: Target = None, additional_forward_args: Any = None,
                  progress: bool = False, **settings) -> torch.Tensor:
        """Attributions of ``inputs: (B, C, H, W)`` for ``target``, in [0, 1], of the inputs' shape."""
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise UserError("protomdm's methods explain one input tensor, not a tuple of several")
            inputs = inputs[0]
        if inputs.dim() != 4:
            raise UserError(f"protomdm's methods explain 2D images (B, C, H, W); got shape {tuple(inputs.shape)}")
        model = _Forward(self.forward_func, inputs.device, additional_forward_args)
        selector, pairs = per_image_targets(model, 0 if target is None else target, inputs.shape[0])
        localizer = create_localizer(self.method, progress=progress, **settings)
        self.localizations = localizer.localize(inputs.detach(), selector, pairs)
        heat = torch.stack([torch.from_numpy(loc.heatmap) for loc in self.localizations])[:, None]
        return heat.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs).contiguous()


class MDM(LocalizerAttribution):
    """Multiple Dynamic Mask as a Captum attribution: ``MDM(model).attribute(x, target=3, steps=500)``."""

    method = "mdm"
