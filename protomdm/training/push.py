"""Prototype push (projection): move every prototype onto a real training patch of its own class."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from ..distributed import DistEnv
from ..explain import PrototypeSelector, UpsampleLocalizer
from ..explain.localization import eval_mode
from ..models import PrototypeModel

# (model-ready images (B, C, H, W), targets, their dataset indices (B,)), in dataset order
Batches = Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
THUMBNAIL_SIDE = 128  # longest side of the source image kept with each prototype (uint8: at most 48 KiB each)


def thumbnail(pixels: torch.Tensor, side: int = THUMBNAIL_SIDE) -> torch.Tensor:
    """``pixels (C, H, W)`` in [0, 1] as a uint8 ``(C, h, w)`` image whose longest side is at most ``side``."""
    h, w = pixels.shape[-2:]
    scale = min(1.0, side / max(h, w))
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        pixels = torch.nn.functional.interpolate(pixels[None].float(), size=size, mode="area")[0]
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def add_provenance(records: list[dict[str, Any]], dataset: Any, dataset_name: str,
                   thumbnails: bool = True) -> list[dict[str, Any]]:
    """Record where each pushed prototype came from: ``dataset`` (its name), ``source`` (``dataset.source(i)``: a
    name that carries no patient data, see :meth:`protomdm.data.table.TableDataset.source`) and, with
    ``thumbnails``, a ``thumbnail`` of the source image (a copy of a training image)."""
    for rec in records:
        i = rec.get("image")
        if i is None:
            continue
        src = dataset.source(i) if hasattr(dataset, "source") else f"#{i}"
        rec.update(dataset=dataset_name, source=str(src))
        if thumbnails:
            rec["thumbnail"] = thumbnail(dataset[i][0])
    return records


@torch.no_grad()
def push_prototypes(model: PrototypeModel, batches: Batches, get_image: Callable[[int], torch.Tensor],
                    multilabel: bool = False, percentile: float = 95.0, dist: DistEnv = DistEnv()
                    ) -> list[dict[str, Any]]:
    """Project each prototype onto its nearest latent vector among training images of its own class (the model's
    :meth:`~protomdm.models.PrototypeModel.push_candidates`: ProtoPNet's nearest latent patch, XProtoNet's
    occurrence-weighted feature vector, among images positive for the prototype's class).

    Args:
        batches: the training set (under torchrun: this rank's shard of it) in a fixed order, as model inputs,
            targets (class index, or multi-hot) and dataset indices.
        get_image: dataset index -> model input ``(1, C, H, W)``, to draw the records' boxes.
        dist: under torchrun, each rank searches its shard and the nearest patch is chosen across all ranks (ties:
            the smallest dataset index, as one process scanning in order would pick).

    Returns:
        One record per prototype: ``image`` (dataset index), ``patch`` (h, w) for ProtoPNet, ``distance`` (of the
        prototype before the push to the vector it moved onto), ``similarity`` (its score on that image after the
        push), ``activation_box`` (the top-``percentile`` box of the upsampled activation / occurrence map on that
        image, in input pixels) and the model's :meth:`~protomdm.models.PrototypeModel.push_details` (ProtoPNet:
        ``patch`` and ``receptive_field_box``).
    """
    with eval_mode(model):
        return _push(model, batches, get_image, multilabel, percentile, dist)


def _push(model: PrototypeModel, batches: Batches, get_image: Callable[[int], torch.Tensor], multilabel: bool,
          percentile: float, dist: DistEnv) -> list[dict[str, Any]]:
    p = model.num_prototypes
    identity = model.prototype_class_identity
    device = identity.device
    best = torch.full((p,), float("inf"), device=device)  # distance to the nearest patch / pooled feature vector
    best_vec = model.prototype_vectors.detach().clone().view(p, -1)
    where: list[tuple[int, int, int] | None] = [None] * p
    for x, y, idx in batches:
        x, y = x.to(device), y.to(device)
        own = (y.float().nan_to_num(0) @ identity.t() if multilabel else identity[:, y].t()) > 0  # (B, P)
        val, vecs, loc = model.push_candidates(x, own)  # (P,), (P, D), (P, 3): image in the batch, h, w
        better = val < best
        best = torch.where(better, val, best)
        best_vec[better] = vecs[better]
        for j in torch.nonzero(better).flatten().tolist():
            where[j] = (int(idx[int(loc[j, 0])]), int(loc[j, 1]), int(loc[j, 2]))
    if dist.active:  # the nearest across ranks; equal distances: the smallest dataset index
        ranks = dist.all_gather((best.cpu(), best_vec.cpu(), where))
        for j in range(p):
            cands = [(float(b[j]), w[j][0], r) for r, (b, _, w) in enumerate(ranks) if w[j] is not None]
            if cands:
                _, _, r = min(cands)
                best[j], best_vec[j], where[j] = ranks[r][0][j], ranks[r][1][j].to(device), ranks[r][2][j]
    model.prototype_vectors.copy_(best_vec.view_as(model.prototype_vectors))

    records: list[dict[str, Any]] = []
    upsample = UpsampleLocalizer()
    for j in range(p):
        rec: dict[str, Any] = {"prototype": j, "class_index": model.prototype_class(j), "image": None}
        if where[j] is not None:
            idx, hh, ww = where[j]
            xi = get_image(idx).to(device)
            rec["image"] = idx
            box = upsample.localize(xi, PrototypeSelector(model, j)).box(percentile)
            rec["activation_box"] = list(box) if box else None
            # the prototype now lies on its source: its score there, as the model computes it from now on
            rec.update(distance=float(best[j]), similarity=float(model.prototype_scores(xi, [j])[0, 0]))
            rec.update(model.push_details(xi, (hh, ww)))
        records.append(rec)
    return records
