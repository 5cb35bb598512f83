"""XProtoNet (Kim et al., "XProtoNet: Diagnosis in Chest Radiography with Global and Local Explanations", CVPR 2021)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .backbones import build_backbone
from .base import Index, PrototypeModel
from .losses import random_affine, xprotonet_loss
from .registry import register_architecture


def _projection(in_channels: int, out_channels: int, final: nn.Module) -> nn.Sequential:
    hidden = max(out_channels, in_channels // 2)
    seq = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, out_channels, 1), final)
    for m in seq.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return seq


class XProtoNetOutput(NamedTuple):
    logits: torch.Tensor  # (B, C)
    similarities: torch.Tensor  # (B, P)
    occurrence: torch.Tensor  # (B, P, h, w) in [0, 1]
    distances: torch.Tensor  # (B, P), what the similarities are computed from


@register_architecture("xprotonet")
class XProtoNet(PrototypeModel):
    """XProtoNet for multi-label diagnosis.

    The backbone's features feed two 1x1 heads: a *feature projection* ``F(x): (B, D, h, w)`` and an *occurrence
    module* ``M(x): (B, P, h, w)`` (sigmoid), one map per prototype. Prototype ``k`` pools the features under its
    own occurrence map, ``f_k = sum_u M_k(u) F(u) / sum_u M_k(u)``, and scores ``s_k = log((d + 1) / (d + eps))`` of
    the squared L2 distance ``d = ||f_k - p_k||^2``, as Kim et al. publish it (``activation="log"``, the default), or
    ``s_k = (1 + cos(f_k, p_k)) / 2`` (``activation="cosine"``, the variant ProtoASNet uses). Class ``c`` is
    predicted from its own prototypes only: ``logit_c = sum_k w_ck s_ck + b_c`` (sigmoid outside).
    """

    activations = ("log", "cosine")
    multilabel_only = True
    localization_map_name = "occurrence map"
    add_on_lr_field = "head_lr"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.features, channels = build_backbone(config.backbone, config.pretrained, config.in_channels)
        self.feature_projection = _projection(channels, config.prototype_dim, nn.Sigmoid())
        self.occurrence_module = _projection(channels, config.num_prototypes, nn.Sigmoid())
        self.prototype_vectors = nn.Parameter(torch.rand(config.num_prototypes, config.prototype_dim))
        k = config.prototypes_per_class
        self.class_weight = nn.Parameter(torch.ones(config.num_classes, k))
        self.class_bias = nn.Parameter(torch.full((config.num_classes,), -0.5 * k))

    @property
    def prototype_shape(self) -> tuple[int, int, int, int]:
        return (*self.prototype_vectors.shape, 1, 1)

    def heads(self, x: torch.Tensor, idx: Index = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected features ``(B, D, h, w)`` and the selected occurrence maps ``(B, K, h, w)``; the two heads run in
        float32 under autocast (only the backbone takes a lower precision: the prototype layers compare near-equal
        vectors)."""
        f = self.features(x)
        with torch.autocast(f.device.type, enabled=False):
            f = f.float()
            return self.feature_projection(f), self.occurrence_module(f)[:, self._index(idx)]

    @staticmethod
    def pooled_features(feats: torch.Tensor, occ: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D, h, w)`` pooled under each occurrence map ``(B, K, h, w)``: ``(B, K, D)``, in float32
        even under autocast: the distance to a prototype is a difference of near-equal vectors where they match, and
        bfloat16's 3 significant digits would leave mostly rounding error in it."""
        with torch.autocast(feats.device.type, enabled=False):
            occ, feats = occ.float(), feats.float()
            return torch.einsum("bkhw,bdhw->bkd", occ, feats) / (occ.sum((2, 3))[..., None] + 1e-6)

    def prototype_distances(self, vectors: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """Distance of feature vectors ``(B, K, *, D)`` to the ``K`` selected prototypes (the ``k``-th vectors to the
        ``k``-th prototype; size-1 dimensions broadcast): ``(B, K, *)``. The squared L2 distance (``log``) or
        ``(1 - cos) / 2`` (``cosine``)."""
        protos = self.prototype_vectors[self._index(idx)]
        protos = protos.view(1, protos.shape[0], *([1] * (vectors.dim() - 3)), protos.shape[1])
        if self.config.activation == "cosine":
            return (1 - F.cosine_similarity(vectors, protos, dim=-1)) / 2
        return ((vectors - protos) ** 2).sum(-1)

    def distance_2_similarity(self, d: torch.Tensor) -> torch.Tensor:
        """Similarity from :meth:`prototype_distances`: ``log((d + 1) / (d + eps))`` or ``1 - d`` (cosine)."""
        if self.config.activation == "cosine":
            return 1 - d
        return torch.log((d + 1) / (d + self.config.epsilon))

    def similarities(self, feats: torch.Tensor, occ: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """Occurrence-weighted similarity ``(B, K)`` of the selected prototypes."""
        return self.distance_2_similarity(self.prototype_distances(self.pooled_features(feats, occ), idx))

    def prototype_scores(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        feats, occ = self.heads(x, idx)
        return self.similarities(feats, occ, idx)

    def prototype_similarity_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """Local similarity ``(B, K, h, w)`` of each location's feature to the prototype, weighted by its
        occurrence map."""
        feats, occ = self.heads(x, idx)
        local = feats.permute(0, 2, 3, 1)[:, None]  # (B, 1, h, w, D): every location against every prototype
        return self.distance_2_similarity(self.prototype_distances(local, idx)) * occ

    def localization_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """The occurrence maps: XProtoNet's own answer to where each prototype is."""
        return self.heads(x, idx)[1]

    def outputs(self, x: torch.Tensor) -> XProtoNetOutput:
        feats, occ = self.heads(x)
        dist = self.prototype_distances(self.pooled_features(feats, occ))
        sims = self.distance_2_similarity(dist)
        return XProtoNetOutput(self.class_logits(sims), sims, occ, dist)

    def class_logits(self, sims: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` from all prototypes' similarities ``(B, P)``: each class's own, weighted, plus bias."""
        return (sims.view(sims.shape[0], self.num_classes, -1) * self.class_weight).sum(-1) + self.class_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class logits ``(B, C)``; apply a sigmoid for probabilities."""
        return self.outputs(x).logits

    # ---------------------------------------------------------------- training, push, class connections
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``add_on``: the feature projection and the occurrence module; ``last``: the class weights and bias."""
        return {"features": list(self.features.parameters()),
                "add_on": list(self.feature_projection.parameters()) + list(self.occurrence_module.parameters()),
                "prototypes": [self.prototype_vectors], "last": [self.class_weight, self.class_bias]}

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, coefs: Any, use_l1: bool = True,
                      pos_weight: torch.Tensor | None = None, augmentation: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """:func:`~protomdm.models.losses.xprotonet_loss` with the batch's affine transforms ``augmentation``
        (none: the identity, which leaves the consistency term at 0)."""
        if augmentation is None:
            augmentation = torch.eye(2, 3, device=x.device).expand(len(x), 2, 3)
        return xprotonet_loss(self, x, y, coefs, pos_weight, augmentation)

    def draw_augmentation(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """The transformation-consistency loss's random affine transforms ``(n, 2, 3)``."""
        return random_affine(n, generator, device)

    def push_candidates(self, x: torch.Tensor, own: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The occurrence-weighted feature vector (under the prototype's own occurrence map) nearest to each
        prototype; ``where``'s (h, w) are 0."""
        feats, occ = self.heads(x)
        pooled = self.pooled_features(feats, occ)  # (B, P, D)
        val, b = self.prototype_distances(pooled).masked_fill(~own, float("inf")).min(0)
        vecs = pooled[b, torch.arange(self.num_prototypes, device=x.device)]
        return val, vecs, torch.stack([b, torch.zeros_like(b), torch.zeros_like(b)], 1)

    def class_connections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each class's weights on its own prototypes, zero elsewhere."""
        weight = torch.zeros(self.num_classes, self.num_prototypes, device=self.class_weight.device)
        for c in range(self.num_classes):
            weight[c, self.prototypes_of_class(c)] = self.class_weight[c].detach()
        return weight, self.class_bias.detach()
