"""Any model with the original ProtoPNet interface (Chen et al.'s code and its descendants: TesNet, Deformable
ProtoPNet, ProtoPool...) as a protomdm prototype network, without importing that codebase.

The interface read is the original's: ``push_forward(x) -> (conv_features, distances (B, P, h, w))``,
``prototype_shape`` (or ``prototype_vectors``), ``prototype_class_identity (P, C)``, ``last_layer``, and the
distance-to-similarity map ``distance_2_similarity`` / ``prototype_activation_function`` (``"log"``:
``log((d + 1) / (d + epsilon))``, ``"linear"``: ``-d``, or a callable). Cosine models whose ``push_forward`` already
returns similarities (TesNet-style) use ``activation="similarity"``. A ``forward`` that returns extra values
(``(logits, min_distances)``, ...) is fine: the first is taken as the logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from ..models.base import Index, PrototypeModel

REQUIRED = ("push_forward", "prototype_class_identity")
ACTIVATIONS = ("log", "linear", "similarity")


def missing_interface(model: object) -> list[str]:
    """The original-interface attributes ``model`` lacks (empty when it can be wrapped)."""
    missing = [a for a in REQUIRED if not hasattr(model, a)]
    if not (hasattr(model, "prototype_shape") or hasattr(model, "prototype_vectors")):
        missing.append("prototype_shape or prototype_vectors")
    return missing


class WrappedModel(PrototypeModel):
    """Base of the adapters: a foreign model held as ``wrapped`` (used as is), its first output the logits."""

    wrapped: nn.Module

    def linear_connections(self, last: object) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights (C, P), bias (C,))`` of the wrapped model's last layer ``last`` (zeros for no bias)."""
        if not isinstance(last, nn.Linear):
            raise NotImplementedError(f"{type(self.wrapped).__name__} has no linear last layer")
        bias = last.bias if last.bias is not None else torch.zeros(last.out_features, device=last.weight.device)
        return last.weight.detach(), bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.wrapped(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class ProtoPNetAdapter(WrappedModel):
    """Wrap an original-interface ProtoPNet so that :class:`~protomdm.PrototypeSelector`, MDM and the upsampling
    search work on it unchanged. The wrapped model is used as is (its weights are not copied).

    Args:
        model: the foreign model (an ``nn.Module``).
        activation: ``None`` (the model's own ``distance_2_similarity``, else its ``prototype_activation_function``),
            ``"log"``, ``"linear"``, ``"similarity"`` (``push_forward`` returns similarities) or a callable
            ``distances -> similarities``.
        epsilon: the log activation's epsilon (the original uses 1e-4).
        class_names: names for the classes (default ``"0"``, ``"1"``, ...).
        img_size, mean, std: the input the model expects (default: its ``img_size`` attribute or 224, and
            ImageNet's normalisation, as the original trains).
    """

    def __init__(self, model: nn.Module, activation: str | Callable | None = None, epsilon: float = 1e-4,
                 class_names: Sequence[str] | None = None, img_size: int | tuple[int, int] | None = None,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        missing = missing_interface(model)
        if missing:
            raise UserError(f"{type(model).__name__} does not have the ProtoPNet interface; missing: "
                            f"{', '.join(missing)}")
        identity = torch.as_tensor(model.prototype_class_identity).detach().float()
        shape = tuple(model.prototype_shape) if hasattr(model, "prototype_shape") else \
            tuple(model.prototype_vectors.shape)
        n_protos, n_classes = identity.shape
        size = img_size or getattr(model, "img_size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        names = tuple(class_names) if class_names else tuple(str(c) for c in range(n_classes))
        if len(names) != n_classes:
            raise UserError(f"{len(names)} class names given for a model with {n_classes} classes")
        act = activation if activation is not None else self._own_activation(model)
        if isinstance(act, str) and act not in ACTIVATIONS:
            raise UserError(f"activation must be one of {', '.join(ACTIVATIONS)} or a callable, got {act!r}")
        config = ModelConfig(architecture="protopnet", backbone=f"external:{type(model).__name__}", class_names=names,
                             prototypes_per_class=max(1, n_protos // n_classes), prototype_dim=int(shape[1]),
                             activation=act if act in ("log", "linear") else "log", epsilon=epsilon,
                             img_size=size, mean=tuple(mean), std=tuple(std))
        super().__init__(config)
        self.prototype_class_identity = identity.to(self.prototype_class_identity.device)
        self.wrapped, self.activation, self.epsilon, self._num_prototypes = model, act, epsilon, n_protos

    @staticmethod
    def _own_activation(model: nn.Module) -> str | Callable:
        if callable(getattr(model, "distance_2_similarity", None)):
            return model.distance_2_similarity
        act = getattr(model, "prototype_activation_function", "log")
        return act if callable(act) or act in ACTIVATIONS else "log"

    @property
    def num_prototypes(self) -> int:
        return self._num_prototypes

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        if callable(self.activation):
            return self.activation(d)
        if self.activation == "log":
            return torch.log((d + 1) / (d + self.epsilon))
        return -d if self.activation == "linear" else d

    def prototype_similarity_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        _, d = self.wrapped.push_forward(x)
        return self.similarity(d[:, self._index(idx)])

    def prototype_scores(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        return F.adaptive_max_pool2d(self.prototype_similarity_maps(x, idx), 1).flatten(1)

    def localization_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        return self.prototype_similarity_maps(x, idx)

    def class_connections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped model's ``last_layer`` weights ``(C, P)`` and bias (zeros if it has none)."""
        return self.linear_connections(getattr(self.wrapped, "last_layer", None))


def as_prototype_model(model: nn.Module, **kwargs) -> PrototypeModel:
    """``model`` itself if it is a protomdm prototype network, else a :class:`ProtoPNetAdapter` around it."""
    return model if isinstance(model, PrototypeModel) else ProtoPNetAdapter(model, **kwargs)
