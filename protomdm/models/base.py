"""What every prototype network in protomdm offers to the selectors and localizers."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError

Index = int | Sequence[int] | None


class PrototypeModel(nn.Module):
    """Base class of every prototype network (ProtoPNet, XProtoNet, an adapted foreign model).

    Prototype ``j`` belongs to class ``j // prototypes_per_class``. Subclasses implement
    :meth:`prototype_similarity_maps`, :meth:`prototype_scores` and :meth:`localization_maps`; each takes the
    input ``x: (B, C, H, W)`` and the prototype indices to compute (``None``: all), and evaluates the network only
    as far as those need (no last layer).

    An architecture that trains (registered with :func:`protomdm.models.registry.register_architecture`) also owns
    what differs between architectures, so that the trainer, the push and the case reports never ask which one they
    hold: :meth:`parameter_groups`, :meth:`training_loss` (and :meth:`draw_augmentation`), :meth:`push_candidates`
    and :meth:`push_details`, :meth:`class_connections`, and the class attributes below.
    """

    prototype_class_identity: torch.Tensor  # (P, C) 0/1, a buffer

    #: the ``activation`` values (similarity functions) its config may name; the first is the default
    activations: ClassVar[tuple[str, ...]] = ("log",)
    #: it only trains on multi-label targets (XProtoNet), whatever ``config.multilabel`` says
    multilabel_only: ClassVar[bool] = False
    #: what :meth:`localization_maps` is called in figures and reports
    localization_map_name: ClassVar[str] = "similarity map"
    #: the :class:`~protomdm.training.config.OptimConfig` field of the ``add_on`` group's learning rate in the joint stage
    add_on_lr_field: ClassVar[str] = "add_on_lr"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        identity = torch.zeros(config.num_prototypes, config.num_classes)
        identity[torch.arange(config.num_prototypes), torch.arange(config.num_prototypes) // config.prototypes_per_class] = 1
        self.register_buffer("prototype_class_identity", identity)

    @property
    def num_prototypes(self) -> int:
        return self.config.num_prototypes

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def multilabel(self) -> bool:
        """Several classes per image (sigmoid outputs): always for a :attr:`multilabel_only` architecture."""
        return self.multilabel_only or self.config.multilabel

    def prototype_class(self, j: int) -> int:
        """Class index that prototype ``j`` belongs to."""
        return int(self.prototype_class_identity[self.check_prototype(j)].argmax())

    def prototypes_of_class(self, c: int) -> list[int]:
        """Indices of the prototypes of class ``c``."""
        return torch.nonzero(self.prototype_class_identity[:, c]).flatten().tolist()

    def check_prototype(self, j: int) -> int:
        """Return ``j`` if it is a valid prototype index, else raise a :class:`UserError` naming the range."""
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < self.num_prototypes:
            raise UserError(f"prototype index {j} out of range: this model has prototypes 0..{self.num_prototypes - 1}")
        return j

    def _index(self, idx: Index) -> torch.Tensor | slice:
        if idx is None:
            return slice(None)
        ids = [idx] if isinstance(idx, int) else list(idx)
        for j in ids:
            self.check_prototype(j)
        return torch.as_tensor(ids, dtype=torch.long, device=self.prototype_class_identity.device)

    def prototype_similarity_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """Similarity of each latent location to the prototypes: ``(B, K, h, w)``."""
        raise NotImplementedError

    def prototype_scores(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """The prototypes' pooled similarity scores, the inputs of the last layer: ``(B, K)``."""
        raise NotImplementedError

    def localization_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        """The network's own answer to "where is prototype j": ``(B, K, h, w)`` at feature resolution."""
        raise NotImplementedError

    # ---------------------------------------------------------------- what each trainable architecture owns
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainer's groups: ``features`` (backbone), ``add_on`` (the layers between backbone and prototypes),
        ``prototypes`` and ``last`` (the class connections)."""
        raise NotImplementedError(f"{type(self).__name__} does not train in protomdm")

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, coefs: Any, use_l1: bool = True,
                      pos_weight: torch.Tensor | None = None, augmentation: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """``(loss, parts, logits)`` of a batch ``x: (B, C, H, W)`` with targets ``y`` (class indices ``(B,)`` or
        multi-hot ``(B, C)``, NaN where unknown); ``coefs``: a :class:`~protomdm.models.losses.LossConfig`;
        ``augmentation``: this batch's rows of :meth:`draw_augmentation`."""
        raise NotImplementedError(f"{type(self).__name__} does not train in protomdm")

    def draw_augmentation(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
        """Random parameters ``(n, ...)`` its loss needs for a global batch of ``n`` (drawn from the shared
        ``generator``, so every rank draws the same), or None."""
        return None

    def push_candidates(self, x: torch.Tensor, own: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each prototype, the nearest candidate vector in the batch ``x: (B, C, H, W)`` among images of its own
        class (``own: (B, P)`` bool): ``(distance (P,), vector (P, D), where (P, 3) = (image, h, w))``."""
        raise NotImplementedError(f"{type(self).__name__} has no push")

    def push_details(self, x: torch.Tensor, where: tuple[int, int]) -> dict[str, Any]:
        """Extra fields of a push record for a prototype pushed onto latent cell ``where`` of ``x: (1, C, H, W)``."""
        return {}

    def class_connections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights (C, P), bias (C,))``: how each class's logit reads each prototype's similarity."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its class connections")
