"""What every prototype network in protomdm offers to the selectors and localizers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError

Index = int | Sequence[int] | None


class PrototypeModel(nn.Module):
    """Base class of ProtoPNet and XProtoNet.

    Prototype ``j`` belongs to class ``j // prototypes_per_class``. Subclasses implement
    :meth:`prototype_similarity_maps`, :meth:`prototype_scores` and :meth:`localization_maps`; each takes the
    input ``x: (B, C, H, W)`` and the prototype indices to compute (``None``: all), and evaluates the network only
    as far as those need (no last layer).
    """

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
