"""Activation selectors: what must stay the same when the image is masked.

A selector maps an input batch ``x: (B, C, H, W)`` to the explained activation. :meth:`Selector.targets` returns
``(B, K, ...)`` for its ``K`` selected targets (prototypes or classes); calling the selector returns ``(B, ...)``
when one target was selected. Selectors evaluate the network only as far as the activation needs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError


def _as_list(index: int | Sequence[int], what: str) -> list[int]:
    ids = [index] if isinstance(index, int) and not isinstance(index, bool) else list(index)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UserError(f"{what} must be an integer or a non-empty list of integers, got {index!r}")
    return ids


class Selector:
    """Base class: subclasses set ``model`` and ``indices`` and implement :meth:`targets`."""

    model: nn.Module
    indices: list[int]
    kind: str = "activation"

    @property
    def num_targets(self) -> int:
        return len(self.indices)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The activation of every selected target: ``(B, K, ...)``."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.targets(x)
        return out[:, 0] if self.num_targets == 1 else out

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K)``: each target as one number (a map's mean), as a classifier's logits are (what Grad-CAM,
        Captum and Quantus explain)."""
        t = self.targets(x)
        return t.flatten(2).mean(-1) if t.dim() > 2 else t

    def subset(self, ks: Sequence[int]) -> "Selector":
        """A selector for the ``ks``-th of this selector's targets, in that order."""
        raise NotImplementedError

    def single(self, k: int) -> "Selector":
        """A selector for only the ``k``-th of this selector's targets."""
        return self.subset([k])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "indices": self.indices}


class PrototypeSelector(Selector):
    """Prototype ``j``'s similarity: the whole map ``(B, h, w)`` or its pooled score ``(B,)``.

    Args:
        model: a protomdm prototype network, or anything wrapped to its interface (``prototype_similarity_maps``,
            ``prototype_scores``, ``localization_maps``, ``num_prototypes``).
        prototype: one index, or several (then :meth:`targets` gives ``(B, K, ...)``).
        reduce: ``"score"`` (default: the max-pooled similarity for ProtoPNet, the occurrence-weighted similarity
            for XProtoNet; ``"max"`` is an alias) or ``"map"`` (the whole similarity map). MDM localizes the score:
            keeping the whole map unchanged would also require keeping every background location's (low)
            similarity, so the masks would cover most of the image.
    """

    kind = "prototype"

    def __init__(self, model: nn.Module, prototype: int | Sequence[int], reduce: str = "score") -> None:
        missing = [a for a in ("prototype_similarity_maps", "prototype_scores", "num_prototypes") if not hasattr(model, a)]
        if missing:
            raise UserError(f"{type(model).__name__} is not a prototype network (missing: {', '.join(missing)}); "
                            "wrap it with protomdm.integrations or use LogitSelector")
        reduce = "score" if reduce == "max" else reduce
        if reduce not in ("map", "score"):
            raise UserError(f"reduce must be 'map' or 'score' (alias 'max'), got {reduce!r}")
        self.model, self.reduce = model, reduce
        self.indices = _as_list(prototype, "prototype")
        n = model.num_prototypes
        for j in self.indices:
            if not 0 <= j < n:
                raise UserError(f"prototype index {j} out of range: this model has prototypes 0..{n - 1}")

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce == "map":
            return self.model.prototype_similarity_maps(x, self.indices)
        return self.model.prototype_scores(x, self.indices)

    def localization_map(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own prototype search map ``(B, K, h, w)`` (ProtoPNet: similarity; XProtoNet: occurrence)."""
        return self.model.localization_maps(x, self.indices)

    def subset(self, ks: Sequence[int]) -> "PrototypeSelector":
        return PrototypeSelector(self.model, [self.indices[k] for k in ks], self.reduce)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "indices": self.indices, "reduce": self.reduce}


def _num_outputs(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


class LogitSelector(Selector):
    """Class ``k``'s logit of any classifier: ``(B,)``.

    The model's output may be a tensor ``(B, C)`` or a tuple whose first item is. An index outside ``0..C-1`` is
    refused up front when ``C`` can be read off the model (``num_classes`` or its last ``nn.Linear``), otherwise at
    the first call.
    """

    kind = "logit"

    def __init__(self, model: nn.Module, class_index: int | Sequence[int], num_classes: int | None = None) -> None:
        self.model = model
        self.indices = _as_list(class_index, "class index")
        self.num_classes = num_classes if num_classes is not None else _num_outputs(model)
        if self.num_classes is not None:
            self._check(self.num_classes)

    def _check(self, n: int) -> None:
        for k in self.indices:
            if not 0 <= k < n:
                raise UserError(f"class index {k} out of range: this model has classes 0..{n - 1}")

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if self.num_classes is None:
            self._check(out.shape[1])
        return out[:, self.indices]

    def subset(self, ks: Sequence[int]) -> "LogitSelector":
        return LogitSelector(self.model, [self.indices[k] for k in ks], self.num_classes)


def per_image_targets(model: nn.Module, wanted: Any, images: int, kind: str = "logit",
                      num_classes: int | None = None) -> tuple[Selector, list[tuple[int, int]]]:
    """One target per image, as attribution libraries ask (Captum's ``target``, Quantus's ``targets``, MONAI's
    ``class_idx``): a selector over the distinct targets and the ``(image, target)`` pairs, image ``b`` explaining
    ``wanted[b]`` (a class for ``kind="logit"``, a prototype for ``kind="prototype"``). ``wanted``: one index for
    all ``images``, or one per image (a sequence, array or tensor)."""
    wanted = torch.as_tensor(np.asarray(wanted) if not isinstance(wanted, torch.Tensor) else wanted).flatten().tolist()
    wanted = wanted * images if len(wanted) == 1 else wanted
    if len(wanted) != images:
        raise UserError(f"{len(wanted)} targets given for {images} images: give one for all, or one per image")
    distinct = sorted(set(int(t) for t in wanted))
    if kind == "prototype":
        selector: Selector = PrototypeSelector(model, distinct)
    elif kind == "logit":
        selector = LogitSelector(model, distinct, num_classes=num_classes)
    else:
        raise UserError(f"kind must be logit or prototype, got {kind!r}")
    return selector, [(b, distinct.index(int(t))) for b, t in enumerate(wanted)]


def choose_prototype(model: nn.Module, x: torch.Tensor, prototype: int | None, class_name: str | None) -> int:
    """The prototype to explain: ``prototype`` itself; else the most activated prototype of ``class_name``;
    else the most activated prototype of the top-scoring class."""
    if prototype is not None:
        return model.check_prototype(prototype)
    with torch.no_grad():
        scores = model.prototype_scores(x)[0]
        if class_name is None:
            c = int(model(x)[0].argmax())
        elif class_name in model.class_names:
            c = model.class_names.index(class_name)
        else:
            raise UserError(f"class {class_name!r} is not one of this model's classes: {', '.join(model.class_names)}")
    own = model.prototypes_of_class(c)
    return own[int(scores[own].argmax())]


class SelectorScores(nn.Module):
    """``forward(x) -> selector.scores(x)`` ``(B, K)``: a selector as a module whose outputs are its targets, as if
    they were class logits (for Grad-CAM, Captum and Quantus)."""

    def __init__(self, selector: Selector) -> None:
        super().__init__()
        self.selector = selector
        self.model = selector.model  # registered, so hooks and .eval() reach it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.selector.scores(x)
