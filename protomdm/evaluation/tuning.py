"""Choosing MDM's settings against ground truth, as the paper does ("by 5-fold cross-validation using part of the
dataset", section 3.2): score a grid of settings on labelled images, then pick by k-fold cross-validation.
:func:`tune` is ``protomdm tune``: that on a dataset source, written to a folder with the ``mdm.yaml`` it chose.

One search serves the whole grid: every loss setting (``lambda_l1`` of the normalised loss, ``(lambda1, lambda2)``
of the paper's) is a task of its own in one batched search (:meth:`~protomdm.explain.mdm.MDMLocalizer.fit_masks`
takes a loss per task), and the threshold ``gamma`` and the mask sizes are read off the trained masks afterwards
(the masks are independent, so a subset of sizes is the search that trained only those).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from ..config import check_finite, require, to_dict
from ..data.config import DataConfig
from ..data.groundtruth import EvalSample
from ..data.images import model_input
from ..data.sources import EvalOptions, dataset_source
from ..device import resolve_device
from ..explain.localization import model_device
from ..explain.mdm import MDMConfig, MDMLocalizer, MDMLoss, images_per_search, masks_to_heatmap
from ..explain.selectors import Selector
from ..files import atomic_write, write_csv
from ..models import load_model
from ..runfolder import run_folder
from . import metrics as M
from .faithfulness import deletion_insertion

OBJECTIVES = ("dice", "iou", "dice_area", "iou_area", "pointing_game")  # what tune can maximise
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
        check_finite(self)
        require(all(float(v).is_integer() for s in self.sizes for v in s), "grid sizes must be whole numbers of cells")
        self.sizes = tuple(tuple(int(v) for v in s) for s in self.sizes)  # type: ignore[assignment]
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
    """``(metric, percentile, value)`` rows of one heatmap against ``truth``: Dice and IoU of the top-percentile masks
    (with the ceiling of their Dice), and at ``area`` (the percentile that keeps the object's own area: NaN in the
    percentile column), the pointing game and the heatmap's non-zero area (a share of the image)."""
    rows = []
    vals = M.localization_scores(heat, truth, percentiles)
    for i, p in enumerate(percentiles):
        rows += [("dice", p, float(vals["dice"][i])), ("iou", p, float(vals["iou"][i])),
                 ("dice_ceiling", p, M.dice_ceiling(truth, p))]
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
                   seed: int = 0, reference: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """k-fold cross-validation of the grid over images: in each fold the setting with the best mean objective on the
    other folds is scored on the held-out one.

    Args:
        reference: a setting of the grid (:data:`SETTING_COLUMNS`, as :func:`setting_of` gives it), e.g. the
            default one: its objective on each held-out fold is given beside, as column ``reference``.

    Returns:
        ``(chosen, table)``: the setting with the best mean objective on all images (a dict of
        :data:`SETTING_COLUMNS` and ``value``), and one row per fold (its images, the setting chosen without it,
        that setting's objective on the fold and on the rest, the best on the fold alone, and ``reference``).
    """
    obj = objective_values(scores, metric, percentile)
    images = np.array(sorted(obj.image.unique()))
    require(len(images) >= 2, f"cross-validation needs at least 2 images with ground truth, got {len(images)}")
    folds = max(2, min(folds, len(images)))
    order = np.random.default_rng(seed).permutation(len(images))
    parts = np.array_split(images[order], folds)
    keyed = obj.assign(key=_setting_keys(obj))
    first = keyed.drop_duplicates("key").set_index("key")[list(SETTING_COLUMNS)]
    ref_key = _setting_keys(pd.DataFrame([reference], columns=list(SETTING_COLUMNS)))[0] if reference else None
    require(ref_key is None or ref_key in first.index, f"the reference setting {reference} is not in the grid")

    def best(frame: pd.DataFrame) -> tuple[str, float]:
        means = frame.groupby("key", sort=False).value.mean()
        return str(means.idxmax()), float(means.max())

    rows = []
    for f, held in enumerate(parts):
        inside = keyed.image.isin(held)
        key, train_score = best(keyed[~inside])
        test = float(keyed[inside & (keyed.key == key)].value.mean())
        _, oracle = best(keyed[inside])
        ref = float(keyed[inside & (keyed.key == ref_key)].value.mean()) if ref_key else np.nan
        rows.append({"fold": f, "images": len(held), **first.loc[key].to_dict(), "train": train_score,
                     "held_out": test, "best_on_fold": oracle, "reference": ref})
    key, score = best(keyed)
    return {**first.loc[key].to_dict(), "value": score}, pd.DataFrame(rows)


def _setting_keys(frame: pd.DataFrame) -> pd.Series:
    """One text key per row of the setting columns (NaN and numbers written as pandas writes them)."""
    cols = frame[list(SETTING_COLUMNS)].astype({"lambda_l1": float, "lambda1": float, "lambda2": float,
                                                "gamma": float})
    return cols.map(str).agg("|".join, axis=1)


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


def with_setting(grid: MDMGrid, base: MDMConfig) -> MDMGrid:
    """``grid`` grown to hold ``base``'s loss, gamma and mask sizes (a contiguous range), so that it is scored too."""
    lo, hi = min(base.sizes), max(base.sizes)
    require(tuple(base.sizes) == tuple(range(lo, hi + 1)), f"the base MDM sizes {base.sizes} are not one range of "
            "consecutive sizes, which the grid's sizes are")
    add = lambda vals, v: vals if v in vals else (*vals, v)  # noqa: E731
    if base.loss == "paper":
        grid = dataclasses.replace(grid, paper=add(grid.paper, (base.lambda1, base.lambda2)))
    else:
        grid = dataclasses.replace(grid, lambdas=add(grid.lambdas, base.lambda_l1))
    return dataclasses.replace(grid, gammas=add(grid.gammas, base.gamma), sizes=add(grid.sizes, (lo, hi)))


def base_setting(base: MDMConfig) -> dict:
    """``base`` as a grid setting (:func:`setting_of`)."""
    return setting_of(MDMLoss.of(base), base.gamma, (min(base.sizes), max(base.sizes)))


@dataclass
class TuneResult:
    """What :func:`tune` chose (``chosen``, an :class:`MDMConfig`) and measured: ``folds`` the per-fold table of
    :func:`cross_validate`, ``scores`` every (image, finding, setting, metric) value, ``seconds`` the whole run."""

    out_dir: Path
    chosen: MDMConfig
    setting: dict
    folds: pd.DataFrame
    scores: pd.DataFrame
    images: int
    seconds: float


def tune(ckpt: str | Path, out_dir: str | Path, data: DataConfig | None = None, grid: MDMGrid | None = None, *,
         base: MDMConfig | None = None, limit: int | None = None, seed: int = 1, folds: int = 5,
         metric: str = "dice", percentile: float | None = 90.0, batch_images: int | None = None,
         device: str = "auto", overwrite: bool = False, progress: bool = True) -> TuneResult:
    """Choose MDM's settings for ``ckpt`` on a dataset source by k-fold cross-validation over images.

    Every finding of the first ``limit`` images with ground truth explains its class's most activated prototype;
    every setting of ``grid`` (grown to hold ``base``'s, the reference) is scored there (:func:`grid_scores`), and
    :func:`cross_validate` picks the one with the best mean ``metric`` at ``percentile`` (None: a percentile-free
    metric such as ``dice_area`` or ``pointing_game``). Writes to ``out_dir``: ``mdm.yaml`` (``base`` with the chosen
    loss, lambda, gamma and sizes; ``--mdm-config`` reads it), ``folds.csv``, ``scores.csv``, ``settings.csv`` (each
    setting's means) and ``summary.md``.
    """
    t0 = time.perf_counter()
    base = base or MDMConfig()
    grid = with_setting(grid or MDMGrid(), base)
    require(folds >= 2, f"cross-validation needs at least 2 folds, got {folds}")
    require(metric in OBJECTIVES, f"unknown metric {metric!r}; choose one of {', '.join(OBJECTIVES)}")
    percentile = percentile if metric in ("dice", "iou") else None  # the others have none
    dev = resolve_device(device)
    model = load_model(ckpt, dev).eval()
    data = data or DataConfig()
    options = EvalOptions(limit, seed, multilabel=model.multilabel)
    record = {"checkpoint": str(ckpt), "data": to_dict(data), "limit": limit, "seed": seed, "folds": folds,
              "metric": metric, "percentile": percentile, "grid": to_dict(grid), "base": to_dict(base)}
    out = Path(out_dir)
    with run_folder(out, ("scores.csv",), record, overwrite=overwrite):
        samples = [s for s in dataset_source(data).evaluation(model.config, options) if isinstance(s, EvalSample)
                   and s.findings]
        require(len(samples) >= 2, f"tuning needs at least 2 images with ground truth of the model's classes; "
                f"the {data.dataset} dataset gave {len(samples)}")
        per = images_per_search(batch_images, dev, model, len(grid.all_sizes()) * len(grid.losses()))  # masks an image
        frames = []
        for start in tqdm(range(0, len(samples), per), desc="tuning", unit="search", disable=not progress):
            chunk = samples[start:start + per]
            x = model_input(torch.stack([s.pixels for s in chunk]).to(dev), model.config)
            findings = [(b, f.class_index, f.truth, s.id, f.name) for b, s in enumerate(chunk) for f in s.findings]
            selector, targets = default_targets(model, x, findings)
            frames.append(grid_scores(x, selector, targets, grid, base))
        scores = pd.concat(frames, ignore_index=True)
        reference = base_setting(base)
        chosen, table = cross_validate(scores, folds, metric, percentile, seed, reference=reference)
        config = config_of(chosen, base)
        means = setting_means(scores)
        for name, frame in (("scores.csv", scores), ("folds.csv", table), ("settings.csv", means)):
            write_csv(out / name, list(frame.columns), frame.to_dict("records"))  # ids from the data: cells made safe
        result = TuneResult(out, config, chosen, table, scores, len(samples), time.perf_counter() - t0)
        objective = f"{metric}" + (f" of the top-{100 - percentile:g}% mask" if percentile is not None else "")
        head = (f"# MDM settings chosen by protomdm tune: {folds}-fold cross-validation of {objective} on "
                f"{len(samples)} {data.dataset} images ({ckpt})\n"
                f"# chosen: {_describe(chosen)} (mean {chosen['value']:.3f} on all images)\n")
        atomic_write(out / "mdm.yaml", lambda tmp: Path(tmp).write_text(
            head + yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8"))
        atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(
            summary_markdown(result, objective, reference), encoding="utf-8"))
    return result


def _describe(setting: dict) -> str:
    loss = (f"loss paper, lambda1 {setting['lambda1']:g}, lambda2 {setting['lambda2']:g}" if setting["loss"] == "paper"
            else f"lambda {setting['lambda_l1']:g}")
    return f"{loss}, gamma {setting['gamma']:g}, sizes {setting['sizes']}"


def summary_markdown(result: TuneResult, objective: str, reference: dict) -> str:
    """The chosen setting, the per-fold table (chosen without the fold, scored on it, beside the reference
    setting) and what tuning gained on held-out folds."""
    t = result.folds
    lines = [f"# protomdm tune: {objective}", "",
             f"{result.images} images, {len(t)} folds, {result.seconds:.0f} s. Chosen on all images: "
             f"**{_describe(result.setting)}** (mean {result.setting['value']:.3f}); reference (the base settings): "
             f"{_describe(reference)}.", "",
             "| fold | images | chosen without the fold | on the other folds | held out | reference, held out | "
             "best on the fold |", "|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        lines.append(f"| {r.fold} | {r.images} | {_describe(r._asdict())} | {r.train:.3f} | {r.held_out:.3f} | "
                     f"{r.reference:.3f} | {r.best_on_fold:.3f} |")
    w = t.images / t.images.sum()
    tuned, ref = float((t.held_out * w).sum()), float((t.reference * w).sum())
    lines += ["", f"Held out (the cross-validated estimate): tuned {tuned:.3f}, reference {ref:.3f}, "
              f"difference {tuned - ref:+.3f}.", ""]
    return "\n".join(lines)
