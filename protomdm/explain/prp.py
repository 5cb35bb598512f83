"""Prototypical relevance propagation (PRP; Gautam et al., "This looks More Like that", Pattern Recognition 2023),
on zennit's layer-wise relevance propagation.

The relevance of a prototype's similarity at one latent location (the most similar one, as ProtoPNet's score and
CaBRNet's ``location="max"``; every location weighted by its similarity with ``location: all``) is shared among the
latent channels in inverse proportion to their squared difference from the prototype,

    R_c = R * g_c / (sum_c' g_c' + eps),   g_c = 1 / ((z_c - p_c)^2 + eps),

the PRP rule for the similarity layer, and then propagated through the add-on layers and the backbone by LRP: the
z-box rule on the first convolution (bounded by the input's normalised pixel range), z+ on the others, pass-through
on the activations, with batch normalisation merged into the convolutions (zennit's canonizers) and, as in CaBRNet,
the biases left out (``zero_bias``). The relevance per input pixel is post-processed as the other attribution methods
(:mod:`protomdm.explain.attribution`). Without biases the relevance is conserved: the pixels' relevances sum to the
explained similarity (tested).

It needs a ProtoPNet-style network: ``conv_features(x) -> (B, D, h, w)``, prototypes ``(P, D, 1, 1)`` and a
similarity of the squared L2 distance (``activation`` log or linear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import require
from ..errors import UserError
from .attribution import AttributionConfig, AttributionLocalizer
from .registry import register_localizer
from .selectors import Selector


@dataclass
class PRPConfig(AttributionConfig):
    """PRP's settings (defaults: CaBRNet's)."""

    epsilon: float = 1e-6  # the LRP rules' stabiliser
    similarity_epsilon: float = 1e-12  # the similarity rule's stabiliser
    zero_bias: bool = True  # leave the biases out of the propagation (CaBRNet's set_bias_to_zero)
    location: str = "max"  # max: the most similar latent location; all: every location, by its similarity

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.epsilon > 0 and self.similarity_epsilon > 0, "epsilon and similarity_epsilon must be > 0")
        require(self.location in ("max", "all"), f"location must be max or all, got {self.location!r}")


def import_zennit() -> Any:
    try:
        import zennit  # noqa: F401
    except ImportError:
        raise UserError("PRP needs zennit: pip install 'protomdm[attribution]'") from None
    import zennit.canonizers
    import zennit.composites
    import zennit.rules
    import zennit.torchvision
    import zennit.types

    return zennit


class _PRPSimilarity(torch.autograd.Function):
    """Forward: the similarity map ``(n, h, w)`` of latent ``z: (n, D, h, w)`` to prototypes ``p: (n, D, 1, 1)``
    (row ``i`` against prototype ``i``). Backward: the PRP rule, relevance shared among the channels."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, p: torch.Tensor, similarity, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, p)
        ctx.eps = eps
        return similarity(((z - p) ** 2).sum(1))

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        z, p = ctx.saved_tensors
        g = 1 / ((z - p) ** 2 + ctx.eps)
        return g / (g.sum(1, keepdim=True) + ctx.eps) * relevance[:, None], None, None, None


class _Latent(nn.Module):
    """``forward(x) = model.conv_features(x)``, as a module for zennit's composite to hook."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, "conv_features")(x)


@register_localizer("prp", settings=PRPConfig, needs_prototypes=True)
class PRPLocalizer(AttributionLocalizer):
    """Prototypical relevance propagation; see the module docstring."""

    method = "prp"
    settings_class = PRPConfig
    config: PRPConfig

    def check_available(self) -> None:
        import_zennit()

    def _composite(self, model: nn.Module, x: torch.Tensor):
        zennit = import_zennit()
        from torchvision.models import ResNet

        cfg, types, rules = self.config, zennit.types, zennit.rules
        zero = ["bias"] if cfg.zero_bias else None
        mean = torch.tensor(model.config.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(model.config.std, device=x.device).view(1, -1, 1, 1)
        low, high = ((0 - mean) / std).expand_as(x[:1]), ((1 - mean) / std).expand_as(x[:1])
        resnet = any(isinstance(m, ResNet) for m in model.modules())
        canonizers = [zennit.torchvision.ResNetCanonizer()] if resnet else \
            [zennit.canonizers.SequentialMergeBatchNorm()]
        layer_map = [(types.Activation, rules.Pass()), (types.AvgPool, rules.Norm()),
                     (types.Convolution, rules.ZPlus(stabilizer=cfg.epsilon, zero_params=zero)),
                     (types.Linear, rules.Epsilon(epsilon=cfg.epsilon, zero_params=zero))]
        first = [(types.Convolution, rules.ZBox(low, high, stabilizer=cfg.epsilon, zero_params=zero))]
        return zennit.composites.SpecialFirstLayerMapComposite(layer_map, first, canonizers=canonizers)

    def attribute(self, x: torch.Tensor, selector: Selector, targets: list[int]) -> torch.Tensor:
        model = selector.model
        protos = getattr(model, "prototype_vectors", None)
        if not (hasattr(model, "conv_features") and isinstance(protos, torch.Tensor) and protos.dim() == 4
                and getattr(model.config, "activation", None) in ("log", "linear")):
            raise UserError(f"PRP needs a ProtoPNet-style prototype layer (conv_features, prototypes (P, D, 1, 1), an "
                            f"L2 similarity); {type(model).__name__} has none: use smoothgrad or mdm")
        p = protos[[selector.indices[k] for k in targets]].detach()
        whole_map = self.config.location == "all" or getattr(selector, "reduce", "score") == "map"
        latent = _Latent(model)
        with self._composite(model, x).context(latent) as hooked:
            xr = x.detach().clone().requires_grad_(True)
            sim = _PRPSimilarity.apply(hooked(xr), p, model.distance_2_similarity, self.config.similarity_epsilon)
            if whole_map:
                relevance = sim.detach()
            else:  # the most similar location's similarity, zero elsewhere
                flat = sim.detach().flatten(1)
                relevance = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True),
                                                            flat.max(1, keepdim=True).values).view_as(sim)
            (attr,) = torch.autograd.grad(sim, xr, grad_outputs=relevance)
        return attr
