"""Training losses of ProtoPNet (Chen et al. 2019) and XProtoNet (Kim et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check_finite
from .base import PrototypeModel


@dataclass
class LossConfig:
    """Loss coefficients. ProtoPNet: cross-entropy, cluster, separation, L1 (Chen et al.). XProtoNet: BCE, cluster,
    separation, occurrence sparsity and transformation consistency (Kim et al.)."""

    crs_ent: float = 1.0
    clst: float = 0.8
    sep: float = -0.08
    l1: float = 1e-4
    occurrence: float = 1e-3
    consistency: float = 0.1
    pos_weight: bool = True  # XProtoNet: weight each finding's positives by negatives / positives

    def __post_init__(self) -> None:
        check_finite(self)


def protopnet_loss(model: PrototypeModel, x: torch.Tensor, y: torch.Tensor, coefs: LossConfig, use_l1: bool = True,
                   pos_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Cross-entropy (or, for multi-label targets, weighted BCE) + cluster + separation + L1 on wrong-class
    last-layer weights.

    ``y``: class indices ``(B,)``, or multi-hot ``(B, C)`` floats (multi-label, as XProtoNet's paper trains its
    ProtoPNet baseline on NIH). Cluster: for each class present in an image, its smallest distance to a prototype of
    that class, averaged over the (image, present class) pairs. Separation: each image's smallest distance to a
    prototype of a class it does not have (a negative coefficient pushes it up). With one class per image both are
    ProtoPNet's. Returns ``(loss, parts, logits)``.
    """
    logits, min_d = model.outputs(x)
    multilabel = y.dim() == 2
    known = known_targets(y) if multilabel else None
    present = y.float().nan_to_num(0) if multilabel else F.one_hot(y, model.num_classes).float()  # (B, C)
    # (B, P): 1 for prototypes of a class the image has, or may have (U-Ignore: neither pulled in nor pushed away)
    own = (present if known is None else 1 - (1 - present) * known) @ model.prototype_class_identity.t()
    big = min_d.detach().max() + 1
    per_class = (min_d[:, None, :] + big * (1 - model.prototype_class_identity.t()[None])).min(2).values  # (B, C)
    cluster = (per_class * present).sum() / present.sum().clamp_min(1)
    separation = (min_d + big * own).min(1).values.mean()
    if multilabel:
        ce = masked_bce(logits, present, known, pos_weight)
    else:
        ce = F.cross_entropy(logits, y)
    l1 = (model.last_layer.weight * (1 - model.prototype_class_identity.t())).abs().sum()
    loss = coefs.crs_ent * ce + coefs.clst * cluster + coefs.sep * separation + (coefs.l1 * l1 if use_l1 else 0)
    parts = {"bce" if multilabel else "ce": ce, "cluster": cluster, "separation": separation, "l1": l1}
    return loss, {k: float(v.detach()) for k, v in parts.items()}, logits


def known_targets(y: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` 1 where a multi-hot target is known, 0 where it is NaN (U-Ignore: left out of the loss)."""
    return (~torch.isnan(y)).float()


def masked_bce(logits: torch.Tensor, y: torch.Tensor, known: torch.Tensor, pos_weight: torch.Tensor | None
               ) -> torch.Tensor:
    """Weighted BCE over the known targets only (the mean over known entries; with all known, PyTorch's)."""
    per = F.binary_cross_entropy_with_logits(logits, y.nan_to_num(0), pos_weight=pos_weight, reduction="none")
    return (per * known).sum() / known.sum().clamp_min(1)


def random_affine(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Random small affine transforms ``(n, 2, 3)``: rotation +-15 deg, scale 0.9-1.1, shift +-10%."""
    r = torch.rand(n, 4, generator=generator).to(device)
    ang = (r[:, 0] - 0.5) * (torch.pi / 6)
    scale = 0.9 + 0.2 * r[:, 1]
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(ang), -scale * torch.sin(ang)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(ang), scale * torch.cos(ang)
    theta[:, :, 2] = (r[:, 2:] - 0.5) * 0.2
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def xprotonet_loss(model: PrototypeModel, x: torch.Tensor, y: torch.Tensor, coefs: LossConfig,
                   pos_weight: torch.Tensor | None, theta: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Weighted BCE + per-class cluster/separation on occurrence-weighted similarities + occurrence sparsity +
    transformation consistency (occurrence maps of a warped image == warped occurrence maps), with the images'
    random affine transforms ``theta: (B, 2, 3)`` (see :func:`random_affine`)."""
    out = model.outputs(x)
    known = known_targets(y)
    bce = masked_bce(out.logits, y, known, pos_weight)
    per_class = (x.shape[0], model.num_classes, -1)
    pos = y.nan_to_num(0)
    neg = (1 - pos) * known
    # Cluster and separation per finding: the nearest own prototype pulled in for present findings (a distance,
    # whose gradient stays bounded), the most similar one's similarity pushed down for absent findings (bounded
    # below by 0, so it fades once they are apart)
    cluster = (out.distances.view(per_class).min(-1).values * pos).sum() / pos.sum().clamp_min(1)
    separation = (out.similarities.view(per_class).max(-1).values * neg).sum() / neg.sum().clamp_min(1)
    sparsity = out.occurrence.mean()
    occ_of_warped = model.heads(warp(x, theta))[1]
    warped_occ = warp(out.occurrence, theta)
    valid = warp(torch.ones_like(out.occurrence[:, :1]), theta)  # ignore what the warp pulled in from outside
    consistency = ((occ_of_warped - warped_occ).abs() * valid).sum() / (valid.sum() * out.occurrence.shape[1]).clamp_min(1)
    # separation enters with |sep| (ProtoPNet's configs give it negative, as a coefficient of a distance)
    loss = (coefs.crs_ent * bce + coefs.clst * cluster + abs(coefs.sep) * separation
            + coefs.occurrence * sparsity + coefs.consistency * consistency)
    parts = {"bce": bce, "cluster": cluster, "separation": separation, "occurrence": sparsity,
             "consistency": consistency}
    return loss, {k: float(v.detach()) for k, v in parts.items()}, out.logits
