"""ProtoPNet (Chen et al., "This Looks Like That", NeurIPS 2019)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .backbones import build_backbone
from .base import Index, PrototypeModel
from .losses import protopnet_loss
from .registry import register_architecture


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
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return seq


def squared_l2_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every latent patch to every prototype, by convolution.

    Args:
        z: latent features ``(B, D, h, w)``.
        prototypes: ``(K, D, 1, 1)``.

    Returns:
        ``(B, K, h, w)``, clamped at 0 against rounding.

    Computed in float32 even under autocast: ``z2 - 2 zp + p2`` cancels most where a patch is near a prototype, so
    a bfloat16 ``zp`` (3 significant digits) would leave the smallest distances, the ones a similarity explains,
    mostly rounding error.
    """
    with torch.autocast(z.device.type, enabled=False):
        z, prototypes = z.float(), prototypes.float()
        z2 = (z * z).sum(1, keepdim=True)
        p2 = (prototypes * prototypes).sum((1, 2, 3)).view(1, -1, 1, 1)
        zp = F.conv2d(z, prototypes)
        return F.relu(z2 - 2 * zp + p2)


class ProtoPNetOutput(NamedTuple):
    logits: torch.Tensor  # (B, C)
    min_distances: torch.Tensor  # (B, P)


@register_architecture("protopnet")
class ProtoPNet(PrototypeModel):
    """ProtoPNet: backbone -> add-on 1x1 layers -> prototype layer -> max-pool -> last layer.

    Prototypes have shape ``(P, D, 1, 1)``; similarity is ``log((d + 1) / (d + eps))`` of the squared L2 distance
    ``d`` (or ``-d`` for ``activation="linear"``). The last layer (P -> C, no bias) starts at +1 for a prototype's
    own class and -0.5 for the others.
    """

    activations = ("log", "linear")
    features: nn.Module
    add_on_layers: nn.Sequential

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
        """Latent features ``(B, D, h, w)`` after the add-on layers, which run in float32 under autocast (only the
        backbone takes a lower precision; see :func:`squared_l2_distances`)."""
        f = self.features(x)
        with torch.autocast(f.device.type, enabled=False):
            return self.add_on_layers(f.float())

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

    # ---------------------------------------------------------------- training, push, class connections
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"features": list(self.features.parameters()), "add_on": list(self.add_on_layers.parameters()),
                "prototypes": [self.prototype_vectors], "last": list(self.last_layer.parameters())}

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, coefs: Any, use_l1: bool = True,
                      pos_weight: torch.Tensor | None = None, augmentation: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """:func:`~protomdm.models.losses.protopnet_loss` (cross-entropy, or masked BCE for multi-hot ``y``)."""
        return protopnet_loss(self, x, y, coefs, use_l1, pos_weight)

    def push_candidates(self, x: torch.Tensor, own: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The latent patch with the smallest squared distance to each prototype."""
        z, d = self.push_forward(x)
        d = d.masked_fill(~own[..., None, None], float("inf"))
        h, w = d.shape[-2:]
        val, flat = d.permute(1, 0, 2, 3).reshape(self.num_prototypes, -1).min(1)
        b, rest = flat // (h * w), flat % (h * w)
        return val, z.permute(0, 2, 3, 1)[b, rest // w, rest % w], torch.stack([b, rest // w, rest % w], 1)

    def push_details(self, x: torch.Tensor, where: tuple[int, int]) -> dict[str, Any]:
        """The pushed ``patch`` (h, w) and its ``receptive_field_box`` in input pixels."""
        with torch.enable_grad():
            return {"patch": list(where), "receptive_field_box": receptive_field_box(self, x, where)}

    def class_connections(self) -> tuple[torch.Tensor, torch.Tensor]:
        bias = self.last_layer.bias if self.last_layer.bias is not None else torch.zeros(self.num_classes)
        return self.last_layer.weight.detach(), bias.detach()


def receptive_field_box(model: ProtoPNet, x: torch.Tensor, cell: tuple[int, int]) -> list[int]:
    """Input-pixel box (x0, y0, x1, y1; exclusive ends) that latent cell ``(h, w)`` of image ``x: (1, C, H, W)``
    depends on, read off the gradient (exact for the network as built, padding and strides included). Where every
    ReLU on the way is off for this image (a flat image), the gradient is zero: it is read on noise instead, and the
    whole image is the box if that fails too."""
    for probe in (x.detach(), torch.rand_like(x)):
        probe = probe.clone().requires_grad_()
        z = model.conv_features(probe)
        (g,) = torch.autograd.grad(z[0, :, cell[0], cell[1]].sum(), probe)
        nz = g.abs().sum((0, 1)) > 0
        if nz.any():
            ys, xs = torch.nonzero(nz.any(1)).flatten(), torch.nonzero(nz.any(0)).flatten()
            return [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]
    return [0, 0, int(x.shape[-1]), int(x.shape[-2])]
