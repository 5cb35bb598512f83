"""Case-based reasoning for one scan: "this looks like that".

A prototype network's class logit is a sum over prototypes: ProtoPNet's ``logit_c = sum_j w_cj s_j`` (its last
layer, no bias), XProtoNet's ``logit_c = sum_{j of c} w_cj s_j + b_c`` (each class reads its own prototypes). The
*contribution* of prototype ``j`` is ``w_cj s_j``; contributions plus the bias are the logit. :func:`explain_case`
ranks the prototypes by contribution to a class, localizes the top ones in the scan in one search, and attaches each
one's source (the training image it was pushed to), when the checkpoint recorded it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError
from .localization import Localization, eval_mode, model_device
from .registry import create_localizer
from .selectors import PrototypeSelector


@dataclass
class CaseRow:
    """One prototype's part in the decision: ``contribution = similarity * weight``."""

    prototype: int
    class_name: str
    similarity: float
    weight: float
    contribution: float
    localization: Localization  # where it is in the scan
    source: dict[str, Any] | None = None  # where it came from (the checkpoint's push record), if recorded


@dataclass
class CaseReport:
    """Why the model scored ``explained_class`` as it did on one image.

    ``classes``: every class with its logit and probability (softmax for single-label ProtoPNet, sigmoid for
    multi-label models), most probable first. ``rows``: the top prototypes by contribution to ``explained_class``;
    ``rest`` the summed contribution of the others, so ``sum(row.contribution) + rest + bias == logit``.
    """

    classes: list[dict[str, Any]]
    explained_class: str
    logit: float
    bias: float
    rest: float
    rows: list[CaseRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (heatmaps left out; each row's box and regions in input pixels)."""
        return {"classes": self.classes, "explained_class": self.explained_class, "logit": self.logit,
                "bias": self.bias, "rest": self.rest, "notes": self.notes,
                "rows": [{"prototype": r.prototype, "class_name": r.class_name, "similarity": r.similarity,
                          "weight": r.weight, "contribution": r.contribution,
                          "box_input": list(r.localization.box(90) or []) or None,
                          "localization": r.localization.summary(),
                          "source": _json_source(r.source)} for r in self.rows]}


def _json_source(src: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if src is None else {k: v for k, v in src.items() if not isinstance(v, torch.Tensor)}


def last_layer_weights(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights (C, P), bias (C,))``: how each class's logit reads each prototype's similarity (the model's
    :meth:`~protomdm.models.PrototypeModel.class_connections`: ProtoPNet's last layer, XProtoNet's per-class
    weights on its own prototypes)."""
    try:
        with torch.no_grad():
            weight, bias = model.class_connections()
    except (AttributeError, NotImplementedError):
        raise UserError(f"prototype contributions need a prototype network that exposes its class connections; "
                        f"{type(model).__name__} does not") from None
    return weight.float().cpu(), bias.detach().float().cpu().reshape(-1)


def prototype_contributions(model: torch.nn.Module, x: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights (C, P), similarities (P,), bias (C,), logits (C,))`` of one image ``x: (1, C, H, W)``: the
    contributions ``weights * similarities`` summed over prototypes, plus ``bias``, are ``logits``."""
    weight, bias = last_layer_weights(model)
    with eval_mode(model), torch.no_grad():
        x = x.to(model_device(model))
        sims = model.prototype_scores(x)[0]
        logits = model(x)[0]
    return weight, sims.float().cpu(), bias, logits.float().cpu()


def class_probabilities(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` logits -> probabilities: sigmoid for multi-label models (XProtoNet, a multi-label ProtoPNet),
    softmax over the classes otherwise."""
    multilabel = getattr(model, "multilabel", False)
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, -1)


def explain_case(model: torch.nn.Module, x: torch.Tensor, top_k: int = 5, method: str = "mdm",
                 class_name: str | None = None, provenance: list[dict[str, Any]] | None = None,
                 progress: bool = False, config: Any = None, **settings) -> CaseReport:
    """Explain one decision: the top-``top_k`` prototypes by contribution to ``class_name`` (default: the most
    probable class), each localized in ``x`` by ``method`` (all in one search).

    Args:
        x: ``(1, C, H, W)`` or ``(C, H, W)``, normalised for the model.
        provenance: the checkpoint's push records (``extra["push"]``), to attach each prototype's source.
        config, **settings: the localizer's settings (an :class:`~protomdm.MDMConfig` for MDM, and/or single
            fields: ``steps=...``).
    """
    x = x[None] if x.dim() == 3 else x
    if x.shape[0] != 1:
        raise UserError("explain_case takes one image")
    if top_k < 1:
        raise UserError(f"top_k must be at least 1, got {top_k}")
    weight, sims, bias, logits = prototype_contributions(model, x)
    contrib = weight * sims[None]
    probs = class_probabilities(model, logits)
    names = list(model.class_names)
    if class_name is None:
        c = int(probs.argmax())
    elif class_name in names:
        c = names.index(class_name)
    else:
        raise UserError(f"class {class_name!r} is not one of this model's classes: {', '.join(names)}")
    notes = []
    candidates = [j for j in range(model.num_prototypes) if float(weight[c, j]) != 0.0]
    if top_k > len(candidates):
        notes.append(f"top-k {top_k} asked for, but only {len(candidates)} prototypes contribute to "
                     f"{names[c]}: showing {len(candidates)}")
        top_k = len(candidates)
    order = sorted(candidates, key=lambda j: -float(contrib[c, j]))[:top_k]
    locs = create_localizer(method, config, progress=progress, **settings).localize_many(
        x.to(model_device(model)), PrototypeSelector(model, order))[0]
    by_proto = {int(r["prototype"]): r for r in provenance or [] if r.get("image") is not None}
    if provenance is None:
        notes.append("the checkpoint records no prototype sources (trained before provenance was kept)")
    rows = [CaseRow(j, names[model.prototype_class(j)], float(sims[j]), float(weight[c, j]), float(contrib[c, j]), loc,
                    by_proto.get(j)) for j, loc in zip(order, locs)]
    shown = sum(r.contribution for r in rows)
    classes = sorted(({"name": n, "logit": float(logits[i]), "probability": float(probs[i])}
                      for i, n in enumerate(names)), key=lambda d: -d["probability"])
    return CaseReport(classes, names[c], float(logits[c]), float(bias[c]), float(contrib[c].sum()) - shown, rows,
                      notes)
