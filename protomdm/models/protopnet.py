"""ProtoPNet (Chen et al., "This Looks Like That", NeurIPS 2019)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .backbones import build_backbone
from .base import Index, PrototypeModel


def add_on_layers(kind: str, in_channels: int, out_channels: int) -> nn.Sequential:
    """ProtoPNet's 1x1 add-on layers, ending in a sigmoid.

    ``bottleneck`` halves the channels until ``out_channels`` (two 1x1 convs per stage), as the original code does;
    ``shallow`` is conv-ReLU-conv.
    """
    layers: list[nn.Module] = []
    if kind == "bottleneck":
        c = in_channels
        while True:
            nxt = max(out_channels, c // 2)
            layers += [nn.Conv2d(c, nxt, 1), nn.ReLU(), nn.Conv2d(nxt, nxt, 1)]
            c = nxt
            if c == out_channels:
                break
            layers.append(nn.ReLU())
    else:
        layers += [nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(), nn.Conv2d(out_channels, out_channels, 1)]
    layers.append(nn.Sigmoid())
    seq = nn.Sequential(*layers)
    for m in seq.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return seq


def squared_l2_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every latent patch to every prototype, by convolution.

    Args:
        z: latent features ``(B, D, h, w)``.
        prototypes: ``(K, D, 1, 1)``.

    Returns:
        ``(B, K, h, w)``, clamped at 0 against rounding.
    """
    z2 = (z * z).sum(1, keepdim=True)
    p2 = (prototypes * prototypes).sum((1, 2, 3)).view(1, -1, 1, 1)
    zp = F.conv2d(z, prototypes)
    return F.relu(z2 - 2 * zp + p2)


class ProtoPNetOutput(NamedTuple):
    logits: torch.Tensor  # (B, C)
    min_distances: torch.Tensor  # (B, P)


class ProtoPNet(PrototypeModel):
    """ProtoPNet: backbone -> add-on 1x1 layers -> prototype layer -> max-pool -> last layer.

    Prototypes have shape ``(P, D, 1, 1)``; similarity is ``log((d + 1) / (d + eps))`` of the squared L2 distance
    ``d`` (or ``-d`` for ``activation="linear"``). The last layer (P -> C, no bias) starts at +1 for a prototype's
    own class and -0.5 for the others.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.features, channels = build_backbone(config.backbone, config.pretrained, config.in_channels)
        self.add_on_layers = add_on_layers(config.add_on, channels, config.prototype_dim)
        self.prototype_vectors = nn.Parameter(torch.rand(config.num_prototypes, config.prototype_dim, 1, 1))
        # multi-label: each finding reads its own prototypes (no negative connections, which other findings present
        # in the same image would trigger) and has a bias, as XProtoNet's classifier does
        self.last_layer = nn.Linear(config.num_prototypes, config.num_classes, bias=config.multilabel)
        self.set_last_layer_incorrect_connection(0.0 if config.multilabel else -0.5)
        if config.multilabel:
            with torch.no_grad():
                self.last_layer.bias.fill_(-0.5 * config.prototypes_per_class)

    @property
    def prototype_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.prototype_vectors.shape)  # type: ignore[return-value]

    def set_last_layer_incorrect_connection(self, strength: float = -0.5) -> None:
        """Last layer weights: 1 from a prototype to its own class, ``strength`` to the others."""
        own = self.prototype_class_identity.t()
        with torch.no_grad():
            self.last_layer.weight.copy_(own + strength * (1 - own))

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Latent features ``(B, D, h, w)`` after the add-on layers."""
        return self.add_on_layers(self.features(x))

    def distances(self, z: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """Squared L2 distances ``(B, K, h, w)`` of latent ``z`` to the selected prototypes."""
        return squared_l2_distances(z, self.prototype_vectors[self._index(idx)])

    def distance_2_similarity(self, d: torch.Tensor) -> torch.Tensor:
        if self.config.activation == "log":
            return torch.log((d + 1) / (d + self.config.epsilon))
        return -d

    def push_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The original interface: ``(latent features (B, D, h, w), distances (B, P, h, w))``."""
        z = self.conv_features(x)
        return z, self.distances(z)

    def prototype_similarity_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        return self.distance_2_similarity(self.distances(self.conv_features(x), idx))

    def prototype_scores(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        # max-pooling the similarity == similarity of the min distance (the activation is decreasing)
        d = self.distances(self.conv_features(x), idx)
        return self.distance_2_similarity(d.flatten(2).min(2).values)

    localization_maps = prototype_similarity_maps

    def outputs(self, x: torch.Tensor) -> ProtoPNetOutput:
        """Logits and per-prototype minimum distances (what the training losses need)."""
        _, d = self.push_forward(x)
        min_d = d.flatten(2).min(2).values
        return ProtoPNetOutput(self.last_layer(self.distance_2_similarity(min_d)), min_d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C)``."""
        return self.outputs(x).logits
