"""The Grad-CAM family, from the maintained ``grad-cam`` package (pytorch-grad-cam), behind our Localizer interface.

Any selector becomes a "classifier" whose outputs are its targets, so Grad-CAM explains a prototype's score exactly
as it explains a class logit. :func:`default_target_layers` picks the layer the package's docs recommend for
torchvision CNNs and Transformers (with the token reshape for ViT and Swin) and the backbone of our prototype
networks.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .localization import Localizer, Maps, Pair
from .registry import register_localizer
from .selectors import SelectorScores

CAM_METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "scorecam": "ScoreCAM",
               "ablationcam": "AblationCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
               "eigencam": "EigenCAM", "hirescam": "HiResCAM"}


def _import_cam():
    try:
        import pytorch_grad_cam
    except ImportError:
        raise UserError("the Grad-CAM methods need the grad-cam package: pip install 'protomdm[cam]'") from None
    return pytorch_grad_cam


def vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """ViT tokens ``(B, 1 + h*w, C)`` -> ``(B, C, h, w)`` (class token dropped)."""
    b, n, c = tokens.shape
    side = int(round((n - 1) ** 0.5))
    return tokens[:, 1:].reshape(b, side, side, c).permute(0, 3, 1, 2)


def swin_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """torchvision Swin activations ``(B, h, w, C)`` -> ``(B, C, h, w)``."""
    return tokens.permute(0, 3, 1, 2)


def default_target_layers(model: nn.Module) -> tuple[list[nn.Module], Callable | None]:
    """The layer(s) to take activations and gradients from, and the reshape transform they need."""
    from torchvision import models as tvm

    if hasattr(model, "prototype_class_identity") and hasattr(model, "features"):
        return [getattr(model, "features")], None  # our prototype networks: the backbone's output
    if isinstance(model, tvm.ResNet):
        return [model.layer4[-1]], None
    if isinstance(model, (tvm.DenseNet, tvm.VGG, tvm.EfficientNet, tvm.MobileNetV2, tvm.MobileNetV3,
                          tvm.ConvNeXt)):
        return [model.features[-1]], None
    if isinstance(model, tvm.VisionTransformer):
        return [model.encoder.layers[-1].ln_1], vit_reshape
    if isinstance(model, tvm.SwinTransformer):
        return [model.features[-1][-1].norm1], swin_reshape
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"cannot choose a Grad-CAM layer for {type(model).__name__}: pass target_layers")
    return [convs[-1]], None


class CAMLocalizer(Localizer):
    """Grad-CAM, Grad-CAM++, Score-CAM, Ablation-CAM, ... of a selector's targets.

    Args:
        method: a key of :data:`CAM_METHODS`.
        target_layers: modules of the selector's model; default :func:`default_target_layers`.
        reshape_transform: for token-shaped activations (ViT, Swin); default chosen with the layers.
        batch_size: forward batch of Score-CAM and Ablation-CAM.
    """

    def __init__(self, method: str = "gradcam", target_layers: Sequence[nn.Module] | None = None,
                 reshape_transform: Callable | None = None, batch_size: int = 32) -> None:
        if method not in CAM_METHODS:
            raise UserError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
        self.method, self.target_layers, self.reshape_transform = method, target_layers, reshape_transform
        self.batch_size = batch_size
        _import_cam()  # a missing grad-cam is said now, before any long work starts

    def compute_maps(self, x: torch.Tensor, selector, pairs: list[Pair]) -> Maps:
        """One Grad-CAM pass per target asked for, over the images that ask for it; maps in [0, 1] as the package
        scales them."""
        pgc = _import_cam()
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layers, reshape = (self.target_layers, self.reshape_transform) if self.target_layers else \
            default_target_layers(selector.model)
        reshape = self.reshape_transform or reshape
        cls = getattr(pgc, CAM_METHODS[self.method])
        maps: dict[tuple[int, int], np.ndarray] = {}
        with cls(model=SelectorScores(selector), target_layers=list(layers), reshape_transform=reshape) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = self.batch_size
            for k in sorted({k for _, k in pairs}):
                used = sorted({b for b, kk in pairs if kk == k})
                with contextlib.redirect_stderr(io.StringIO()):  # Score/Ablation-CAM print their own bars
                    # an input that requires grad keeps a graph even when every weight is frozen (our MDM freezes)
                    out = cam(input_tensor=x[used].detach().clone().requires_grad_(True),
                              targets=[ClassifierOutputTarget(k)] * len(used))  # (len(used), H, W) in [0, 1]
                maps.update({(b, k): out[i] for i, b in enumerate(used)})
        layer_names = {"layers": [type(m).__name__ for m in layers]}
        return Maps(np.stack([maps[pq] for pq in pairs]).astype(np.float32), normalized=True,
                    settings=[layer_names] * len(pairs))


for _method in CAM_METHODS:  # each Grad-CAM method is a localizer of its own name
    register_localizer(_method)(functools.partial(CAMLocalizer, _method))
