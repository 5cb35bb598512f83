"""Choosing MDM's settings against ground truth, as the paper does ("by 5-fold cross-validation using part of the
dataset", section 3.2): score a grid of settings on labelled images, then pick by k-fold cross-validation.

One search serves the whole grid: every loss setting (``lambda_l1`` of the normalised loss, ``(lambda1, lambda2)``
of the paper's) is a task of its own in one batched search (:meth:`~protomdm.explain.mdm.MDMLocalizer.fit_masks`
takes a loss per task), and the threshold ``gamma`` and the mask sizes are read off the trained masks afterwards
(the masks are independent, so a subset of sizes is the search that trained only those).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import MDMConfig, check_finite, require
from ..explain.localization import model_device
from ..explain.mdm import MDMLocalizer, MDMLoss, masks_to_heatmap
from ..explain.selectors import Selector
from . import metrics as M
from .faithfulness import deletion_insertion

SETTING_COLUMNS = ("loss", "lambda_l1", "lambda1", "lambda2", "gamma", "sizes")
GRID_COLUMNS = ("image", "finding", *SETTING_COLUMNS, "metric", "percentile", "value")


@dataclass
class MDMGrid:
    """The MDM settings searched.

    Attributes:
        lambdas: ``lambda_l1`` values of the normalised loss.
        paper: ``(lambda1, lambda2)`` pairs of the paper's loss (``loss: paper``).
        gammas: heatmap thresholds; each must stay below the number of masks of every size range.
        sizes: ranges ``(first, last)`` of mask sizes (the paper's: 6..32).
    """

    lambdas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    paper: tuple[tuple[float, float], ...] = ()
    gammas: tuple[float, ...] = (2.0, 5.0, 10.0)
    sizes: tuple[tuple[int, int], ...] = ((6, 32),)

    def __post_init__(self) -> None:
        self.lambdas, self.gammas = tuple(self.lambdas), tuple(self.gammas)
        self.paper = tuple(tuple(p) for p in self.paper)  # type: ignore[assignment]
        self.sizes = tuple(tuple(s) for s in self.sizes)  # type: ignore[assignment]
        check_finite(self)
        require(bool(self.lambdas or self.paper), "the grid needs at least one lambda_l1 or paper (lambda1, lambda2)")
        require(all(v >= 0 for v in self.lambdas), "grid lambdas must be >= 0")
        require(all(len(p) == 2 and p[0] > 0 and p[1] >= 0 for p in self.paper),
                "grid paper entries must be [lambda1 > 0, lambda2 >= 0]")
        require(bool(self.gammas) and all(g >= 0 for g in self.gammas), "grid gammas must be a non-empty list >= 0")
        require(bool(self.sizes) and all(len(s) == 2 and 1 <= s[0] <= s[1] for s in self.sizes),
                "grid sizes must be [first, last] ranges with 1 <= first <= last")
        fewest = min(b - a + 1 for a, b in self.sizes)
        require(max(self.gammas) < fewest, f"grid gamma {max(self.gammas):g} is not below the {fewest} masks of the "
                "smallest size range")

    def losses(self) -> list[MDMLoss]:
        return ([MDMLoss("normalised", lam) for lam in self.lambdas]
                + [MDMLoss("paper", lambda1=a, lambda2=b) for a, b in self.paper])

    def all_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({a for lo, hi in self.sizes for a in range(lo, hi + 1)}))

    def settings(self) -> list[dict]:
        """Every setting of the grid as the columns of :data:`SETTING_COLUMNS`."""
        return [setting_of(loss, g, s) for loss, g, s in itertools.product(self.losses(), self.gammas, self.sizes)]


def setting_of(loss: MDMLoss, gamma: float, sizes: tuple[int, int]) -> dict:
    """A grid setting as plain columns (the other loss's lambdas are NaN)."""
    paper = loss.kind == "paper"
    return {"loss": loss.kind, "lambda_l1": np.nan if paper else loss.lambda_l1,
            "lambda1": loss.lambda1 if paper else np.nan, "lambda2": loss.lambda2 if paper else np.nan,
            "gamma": gamma, "sizes": f"{sizes[0]}-{sizes[1]}"}


def config_of(setting: dict, base: MDMConfig) -> MDMConfig:
    """The :class:`MDMConfig` of a grid setting (a row with :data:`SETTING_COLUMNS`), the rest from ``base``."""
    lo, hi = (int(v) for v in str(setting["sizes"]).split("-"))
    common = dict(gamma=float(setting["gamma"]), sizes=tuple(range(lo, hi + 1)))
    if setting["loss"] == "paper":
        return dataclasses.replace(base, loss="paper", lambda1=float(setting["lambda1"]),
                                   lambda2=float(setting["lambda2"]), **common)
    return dataclasses.replace(base, loss="normalised", lambda_l1=float(setting["lambda_l1"]), **common)


@dataclass
class Target:
    """One explained activation with its ground truth: target ``k`` of the selector in image ``image`` (its index in
    the batch), whose evidence is ``truth (H, W)`` (bool, at the model's input size)."""

    image: int
    k: int
    truth: np.ndarray
    image_id: str = ""
    finding: str = ""


def heatmap_metrics(heat: np.ndarray, truth: np.ndarray, percentiles: Sequence[float]) -> list[tuple[str, float, float]]:
    """``(metric, percentile, value)`` rows of one heatmap against ``truth``: Dice and IoU of the top-percentile masks,
    and at ``area`` (the percentile that keeps the object's own area: NaN in the percentile column), the pointing
    game and the heatmap's non-zero area (a share of the image)."""
    rows = []
    vals = M.localisation_scores(heat, truth, percentiles)
    for i, p in enumerate(percentiles):
        rows += [("dice", p, float(vals["dice"][i])), ("iou", p, float(vals["iou"][i]))]
    rows += [(k, np.nan, v) for k, v in M.area_scores(heat, truth).items()]
    rows += [("pointing_game", np.nan, float(M.pointing_game(heat, truth))),
             ("nonzero_area", np.nan, float((heat > 0).mean()))]
    return rows


def grid_scores(images: torch.Tensor, selector: Selector, targets: Sequence[Target], grid: MDMGrid,
                base: MDMConfig | None = None, percentiles: Sequence[float] = (80, 90, 95), deletion_steps: int = 0,
                progress: bool = False) -> pd.DataFrame:
    """Score every setting of ``grid`` on every target: one batched MDM search for all (target, loss) tasks.

    Args:
        images: ``(B, C, H, W)`` in the model's input space.
        selector: what is explained; ``targets`` name its ``k``-th target in an image.
        base: the other MDM settings (schedule, baseline...).
        deletion_steps: > 0 also scores deletion/insertion AUC (curves normalised by the unmasked activation).

    Returns:
        a long frame with the columns of :data:`GRID_COLUMNS`.
    """
    base = base or MDMConfig()
    losses = grid.losses()
    sizes = grid.all_sizes()
    loc = MDMLocalizer(dataclasses.replace(base, sizes=sizes, gamma=0.0), progress=progress)
    tasks = [(t, loss) for t in targets for loss in losses]
    fit = loc.fit_masks(images, selector, [(t.image, t.k) for t, _ in tasks], [loss for _, loss in tasks])
    device = model_device(selector.model)
    rows = []
    for i, (t, loss) in enumerate(tqdm(tasks, desc="scoring", disable=not progress, leave=False)):
        score_fn = selector.single(t.k)
        full = float(fit.targets[i].float().mean())
        for gamma, (lo, hi) in itertools.product(grid.gammas, grid.sizes):
            keep = [n for n, a in enumerate(sizes) if lo <= a <= hi]
            heat = masks_to_heatmap(fit.masks[i][keep], gamma)
            setting = setting_of(loss, gamma, (lo, hi))
            found = heatmap_metrics(heat, t.truth, percentiles)
            if deletion_steps:
                dele, ins = deletion_insertion(score_fn, images[t.image].to(device), heat, deletion_steps,
                                               base.baseline)
                scale = full if abs(full) > 1e-12 else 1.0
                found += [("deletion_auc", np.nan, float(M.curve_auc(dele / scale))),
                          ("insertion_auc", np.nan, float(M.curve_auc(ins / scale)))]
            rows += [{"image": t.image_id or str(t.image), "finding": t.finding, **setting, "metric": m,
                      "percentile": p, "value": v} for m, p, v in found]
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS))


def setting_means(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean of every (setting, metric, percentile) over images and findings; NaN setting columns kept."""
    keys = [*SETTING_COLUMNS, "metric", "percentile"]
    return scores.groupby(keys, dropna=False, sort=False).value.mean().reset_index()


def objective_values(scores: pd.DataFrame, metric: str = "dice", percentile: float | None = 90.0) -> pd.DataFrame:
    """Per (setting, image) the objective ``metric`` at ``percentile`` (None: a percentile-free metric)."""
    sel = scores[scores.metric == metric]
    sel = sel[sel.percentile.isna()] if percentile is None else sel[sel.percentile == percentile]
    return sel


def cross_validate(scores: pd.DataFrame, folds: int = 5, metric: str = "dice", percentile: float | None = 90.0,
                   seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """k-fold cross-validation of the grid over images: in each fold the setting with the best mean objective on the
    other folds is scored on the held-out one.

    Returns:
        ``(chosen, table)``: the setting with the best mean objective on all images (a dict of
        :data:`SETTING_COLUMNS` and ``value``), and one row per fold (its images, the setting chosen without it,
        that setting's objective on the fold and on the rest, and the default-free best on the fold for reference).
    """
    obj = objective_values(scores, metric, percentile)
    images = np.array(sorted(obj.image.unique()))
    require(len(images) >= 2, f"cross-validation needs at least 2 images with ground truth, got {len(images)}")
    folds = max(2, min(folds, len(images)))
    order = np.random.default_rng(seed).permutation(len(images))
    parts = np.array_split(images[order], folds)
    keyed = obj.assign(key=obj[list(SETTING_COLUMNS)].astype(str).agg("|".join, axis=1))
    first = keyed.drop_duplicates("key").set_index("key")[list(SETTING_COLUMNS)]

    def best(frame: pd.DataFrame) -> tuple[str, float]:
        means = frame.groupby("key", sort=False).value.mean()
        return str(means.idxmax()), float(means.max())

    rows = []
    for f, held in enumerate(parts):
        inside = keyed.image.isin(held)
        key, train_score = best(keyed[~inside])
        test = float(keyed[inside & (keyed.key == key)].value.mean())
        _, oracle = best(keyed[inside])
        rows.append({"fold": f, "images": len(held), **first.loc[key].to_dict(), "train": train_score,
                     "held_out": test, "best_on_fold": oracle})
    key, score = best(keyed)
    return {**first.loc[key].to_dict(), "value": score}, pd.DataFrame(rows)


def default_targets(model, images: torch.Tensor, findings: Iterable[tuple[int, int, np.ndarray, str, str]]
                    ) -> tuple[Selector, list[Target]]:
    """A prototype selector and targets for ``findings`` ``(image index, class index, truth, image id, name)``: each
    finding explains its class's most activated prototype in its image (as ``localize`` does by default)."""
    from ..explain.selectors import PrototypeSelector

    with torch.no_grad():
        scores = model.prototype_scores(images)
    chosen = []
    for b, c, truth, image_id, name in findings:
        own = model.prototypes_of_class(c)
        chosen.append((b, own[int(scores[b, own].argmax())], truth, image_id, name))
    union = sorted({j for _, j, *_ in chosen})
    return (PrototypeSelector(model, union),
            [Target(b, union.index(j), truth, image_id, name) for b, j, truth, image_id, name in chosen])
