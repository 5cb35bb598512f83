"""``protomdm evaluate``: localize the prototypes of each ground-truth finding with every method and score them.

Writes to the output folder:

- ``results.csv``: one row per (image, finding, prototype, method, percentile, metric) with its value: Dice, IoU,
  PPV and sensitivity of the top-percentile mask per percentile (and ``dice_ceiling``, the best Dice any mask of
  that size can reach against the finding), and, percentile-free, Dice and IoU of the mask with
  the object's own area (``dice_area``, ``iou_area``), the pointing game (0/1), where the finding has boxes whether
  a region's box overlaps each by T(IoU) and T(IoBB) 0.1..0.7 (``region_hit_iou0.1``, ``region_hit_iobb0.1``...:
  Wang et al. 2017's localization accuracy), the
  score on the image and on the image blended by the heatmap (Average Drop/Increase's ``Y`` and ``O``), the
  deletion and insertion AUC (curves normalised by the unmasked score) and whether the heatmap was empty. On CUB also the parts each prototype's region covers, on the image and under noise (part
  consistency and stability). :func:`~protomdm.evaluation.results.read_results` reads it as a typed DataFrame.
- ``curves.csv``: the deletion/insertion curves; ``timings.csv``: each localizer's seconds per localization.
- ``summary.csv`` and ``summary.md``: means per method x percentile (per finding too on NIH and tables), in the layout of
  the MDM paper's tables; ``metrics_vs_percentile.png`` (its Figure 5) and ``deletion_insertion.png``.
- ``skipped.txt``: images listed by the dataset but missing or unreadable (and, with ``maps``, findings without a
  map).
- with ``export=["chexlocalize"]``: ``chexlocalize/<method>/`` in CheXlocalize's own formats (its evaluator's
  segmentation JSON and ``_map.pkl`` files; :mod:`protomdm.report.chexlocalize`).

Where a finding carries its truth at the image's own size (CheXlocalize), the mask metrics, the pointing game and
CheXlocalize's ``hit`` are scored there, the heatmap resized bilinearly as CheXlocalize's evaluator resizes it.
With ``maps``, heatmaps made elsewhere (:class:`~protomdm.data.maps.MapFolder`) are scored as method ``maps``, every
localization metric but the faithfulness ones (those would measure this model with another model's map).

A run is resumable: rows are appended per (image, finding, method) once complete, and ``resume`` skips those.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..config import to_dict
from ..data.config import DataConfig
from ..data.groundtruth import Finding, Skipped
from ..data.images import model_input
from ..data.maps import MapFolder, map_stem
from ..data.sources import EvalOptions, dataset_source, list_datasets
from ..device import resolve_device
from ..distributed import DistEnv, rank_parts
from ..errors import UserError
from ..explain import PrototypeSelector
from ..explain.case import class_probabilities
from ..explain.localization import heatmap_problem, model_device
from ..explain.mdm import MDMConfig, images_per_search
from ..explain.perturbation import Perturbation
from ..explain.registry import create_localizer, list_localizers, method_settings, settings_record, with_mdm
from ..files import append_csv, atomic_write, write_csv
from ..geometry import regions, resize_heatmap
from ..models import PrototypeModel, load_model
from ..report.chexlocalize import write_map, write_segmentations
from ..runfolder import all_rows, merge_rank_parts, run_folder
from . import metrics as M
from .faithfulness import deletion_insertion, heatmap_masked_scores
from .plots import plot_curves, plot_metrics
from .results import COLUMNS, CURVE_COLUMNS, TIMING_COLUMNS, format_percentile, read_curves, read_results, read_timings
from .tables import (
    DIFFERENCE_COLUMNS,
    SUMMARY_COLUMNS,
    headline_percentile,
    markdown_tables,
    paired_differences,
    summarise,
)

POLICIES = ("first", "best-dice", "all-of-class")
MASK_METRICS = tuple(M.MASK_METRICS)
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # Wang et al. 2017's T(IoU) and T(IoBB)
TABLES = ("results.csv", "curves.csv", "timings.csv")  # results first: a unit with its results rows is done
MAPS = "maps"  # the method name of heatmaps read from a folder (``maps``)
EXPORTS = ("chexlocalize",)


@dataclass
class EvalResult:
    """What :func:`evaluate` did: ``results`` is the long frame of every row (see
    :func:`~protomdm.evaluation.results.read_results`), ``summary`` its means (see
    :func:`~protomdm.evaluation.tables.summarise`); both are empty on ranks other than 0."""

    out_dir: Path
    images: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)


def parse_methods(text: str | Sequence[str], maps: bool = False) -> list[str]:
    """The methods of a comma-separated text or a list, checked; ``maps``: the method ``maps`` (heatmaps read from a
    folder) is allowed, and added when missing."""
    methods = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    known = list_localizers() + ([MAPS] if maps else [])
    bad = [m for m in methods if m not in known]
    if MAPS in bad:
        raise UserError("method `maps` scores heatmaps read from a folder: give that folder as `maps`")
    if bad or not (methods or maps):
        raise UserError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    return list(dict.fromkeys(methods + ([MAPS] if maps else [])))


def parse_percentiles(text: str | Sequence[float]) -> list[float]:
    try:
        ps = [float(p) for p in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise UserError(f"percentiles must be numbers separated by commas, got {text!r}") from None
    if not ps or any(not 0 < p < 100 for p in ps):
        raise UserError(f"percentiles must lie strictly between 0 and 100, got {text!r}")
    return sorted(set(ps))


@dataclass
class EvalSettings:
    """What an evaluation measures; every field is recorded in ``run.json`` and ``--resume`` keeps them.

    Attributes:
        dataset: a registered dataset (``synthetic``, ``nih``, ``cub``, ``table``); ``root`` the copy of it (not
            for synthetic); ``data`` the whole data config (a ``table``'s files and columns), which names both.
        methods: registered localizers (see :func:`protomdm.explain.list_localizers`).
        percentiles: the top-(100-p)% masks scored.
        limit: at most this many images (synthetic: default 50); ``seed`` picks the synthetic ones.
        prototype_policy: ``first`` (the first prototype of the finding's class, as the MDM paper does on CUB),
            ``best-dice`` (the class's prototype with the best mean Dice, as it does on NIH) or ``all-of-class``;
            default ``best-dice`` on NIH, else ``first``.
        method_configs: each method's settings by name (an instance of its settings class, a dict or a YAML
            path; the defaults for the others); ``mdm``: the older name of its ``"mdm"`` entry.
        ``truth``/``part_half_width``: CUB's ground truth (``segmentation`` or ``parts``).
        faithfulness: also score deletion/insertion (``deletion_steps`` steps) and Average Drop/Increase,
            masking with ``baseline``. ``stability_noise``: CUB's part stability noise.
        batch_images: images sharing one localizer search (MDM trains their masks together); default
            :func:`~protomdm.explain.mdm.images_per_search`'s (4 on the CPU; on a GPU, from its free memory).
        maps: a folder of heatmaps made elsewhere (:class:`~protomdm.data.maps.MapFolder`), scored as method
            ``maps`` beside ``methods`` (only them, where ``methods`` is left empty).
        export: ``["chexlocalize"]``: also write each method's maps and masks in CheXlocalize's formats (the
            chexlocalize dataset; masks at the headline percentile: 90, else the middle one of ``percentiles``).
    """

    dataset: str = "synthetic"
    root: str | Path | None = None
    methods: Sequence[str] = ("upsample", "mdm")
    percentiles: Sequence[float] = (70, 80, 90, 95)
    limit: int | None = None
    prototype_policy: str | None = None
    seed: int = 1
    method_configs: dict[str, Any] | None = None
    mdm: MDMConfig | None = None
    truth: str = "segmentation"
    part_half_width: int = 16
    faithfulness: bool = True
    deletion_steps: int = 16
    baseline: str = "zero"
    stability_noise: float = 0.2
    batch_images: int | None = None
    data: DataConfig | None = None
    maps: str | Path | None = None
    export: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.data is None:
            if self.dataset != "synthetic" and not self.root:
                raise UserError(f"the {self.dataset} dataset needs `root` (the folder of your copy)")
            self.data = DataConfig(dataset=self.dataset, root=str(self.root) if self.root else None)
        elif self.root:  # a root given beside a data config wins
            self.data = dataclasses.replace(self.data, root=str(self.root))
        self.dataset = self.data.dataset
        if self.dataset not in list_datasets():
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(list_datasets())}")
        self.methods = parse_methods(self.methods, maps=self.maps is not None)
        configs = with_mdm(self.method_configs, self.mdm)
        self.method_configs = {m: method_settings(m, configs.get(m)) for m in self.methods if m != MAPS}
        self.mdm = None  # now method_configs["mdm"]
        self.export = list(dict.fromkeys([self.export] if isinstance(self.export, str) else self.export))
        bad = [e for e in self.export if e not in EXPORTS]
        if bad:
            raise UserError(f"unknown export {bad[0]!r}; choose from {', '.join(EXPORTS)}")
        if self.export and self.dataset != "chexlocalize":
            raise UserError("`export` chexlocalize needs the chexlocalize dataset (its image ids, tasks and sizes)")
        self.percentiles = parse_percentiles(self.percentiles)
        if self.deletion_steps < 1:
            raise UserError(f"deletion/insertion curves need at least 1 step, got {self.deletion_steps}")
        Perturbation(self.baseline)  # an unknown baseline is refused here
        images_per_search(self.batch_images, torch.device("cpu"))
        self.prototype_policy = self.prototype_policy or ("best-dice" if self.dataset == "nih" else "first")
        if self.prototype_policy not in POLICIES:
            raise UserError(f"unknown prototype policy {self.prototype_policy!r}; choose one of {', '.join(POLICIES)}")
        if self.export and self.prototype_policy == "all-of-class":
            raise UserError("`export` writes one map per image and finding: use prototype policy first or best-dice")

    def record(self, ckpt: str | Path) -> dict[str, Any]:
        """The settings that decide the results, as ``run.json`` keeps them."""
        records = {m: settings_record(m, self.method_configs) for m in self.methods if m != MAPS}
        return {"checkpoint": str(ckpt), "dataset": self.dataset, "data": to_dict(self.data),
                "methods": self.methods, "percentiles": self.percentiles, "limit": self.limit,
                "policy": self.prototype_policy, "seed": self.seed, "truth": self.truth,
                "part_half_width": self.part_half_width, "faithfulness": self.faithfulness,
                "deletion_steps": self.deletion_steps, "baseline": self.baseline,
                "mdm": records.get("mdm"),  # the key earlier runs recorded MDM's settings under
                **({"method_settings": others} if (others := {m: r for m, r in records.items() if m != "mdm" and r})
                   else {}),
                **({"maps": str(self.maps)} if self.maps is not None else {}),
                **({"export": self.export} if self.export else {})}


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _chunks(items: Iterable, n: int) -> Iterable[list]:
    """``items`` in lists of ``n`` (the last may be shorter)."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Scorer:
    """Scores one localization against one finding; holds the shared settings."""

    def __init__(self, model: PrototypeModel, percentiles: list[float], faithfulness: bool, steps: int,
                 baseline: str, parts: bool) -> None:
        self.model, self.percentiles, self.faithfulness = model, percentiles, faithfulness
        self.steps, self.baseline, self.parts = steps, baseline, parts
        self.region_percentile = headline_percentile(percentiles)

    def rows(self, x: torch.Tensor, heat: np.ndarray, score: float, finding: Finding, j: int,
             noisy_heat: np.ndarray | None) -> tuple[list[tuple], list[tuple]]:
        """``(metric rows (percentile, metric, value), curve rows (kind, values))`` for prototype ``j`` (-1: a map
        made elsewhere, without faithfulness rows). ``heat``: ``(h, w)`` at any size; it is resized bilinearly to
        the grid of the truth it is scored against."""
        out, curves = [], []
        model_heat = resize_heatmap(heat, finding.truth.shape)
        truth = finding.truth if finding.original is None else finding.original
        scored = resize_heatmap(heat, truth.shape)
        vals = M.localization_scores(scored, truth, self.percentiles)
        for i, p in enumerate(self.percentiles):
            out += [(p, m, float(vals[m][i])) for m in MASK_METRICS] + [(p, "dice_ceiling", M.dice_ceiling(truth, p))]
        out += [("", k, v) for k, v in M.area_scores(scored, truth).items()]
        out.append(("", "pointing_game", float(M.pointing_game(scored, truth))))
        if finding.original is not None:  # CheXlocalize's name for it, at the image's size
            out.append(("", "hit", M.hit(scored, truth)))
        if finding.boxes:  # every region of the mask against every ground-truth box of the finding
            found = [r.box for r in regions(model_heat, self.region_percentile)]
            out += [(self.region_percentile, f"region_hit_{o}{t:g}", M.region_hit_rate(found, finding.boxes, t, o))
                    for o in ("iou", "iobb") for t in THRESHOLDS]
        if self.faithfulness and j >= 0:
            sel = PrototypeSelector(self.model, j)
            out.append(("", "score", score))
            out.append(("", "score_heatmap_masked", float(heatmap_masked_scores(sel, x[0], model_heat[None],
                                                                               self.baseline)[0])))
            dele, ins = deletion_insertion(sel, x[0], model_heat, self.steps, self.baseline)
            full = score if abs(score) > 1e-12 else 1.0
            dele, ins = dele / full, ins / full
            out += [("", "deletion_auc", M.curve_auc(dele)), ("", "insertion_auc", M.curve_auc(ins))]
            curves += [("deletion", dele), ("insertion", ins)]
        if self.parts and finding.parts is not None:
            region = M.top_percentile_mask(model_heat, self.region_percentile)
            bits = lambda h: "".join("1" if b else "0" for b in h)  # noqa: E731
            out.append((self.region_percentile, "part_hits", bits(M.part_hits(region, finding.parts))))
            out.append((self.region_percentile, "part_visible", bits(finding.parts[:, 2] > 0)))
            if noisy_heat is not None:
                noisy = M.top_percentile_mask(noisy_heat, self.region_percentile)
                out.append((self.region_percentile, "part_hits_noisy", bits(M.part_hits(noisy, finding.parts))))
        return out, curves


@dataclass
class _Found:
    """One heatmap of a unit: prototype ``j`` (-1 for a map read from a folder), its heatmap, score, seconds,
    whether it is ``ok`` (not empty) and the heatmap of the noisy image (CUB's stability), if any."""

    j: int
    heat: np.ndarray
    score: float
    seconds: float
    ok: bool
    noisy: np.ndarray | None = None


def _localized(localizer, xs: torch.Tensor, noisy_xs: torch.Tensor | None, model: PrototypeModel,
               units: list[tuple[int, Finding]], policy: str) -> Iterator[list[_Found]]:
    """Each unit's prototypes localized by ``localizer``, all units in one search."""
    protos = [model.prototypes_of_class(f.class_index) for _, f in units]
    protos = [own[:1] if policy == "first" else own for own in protos]
    union = sorted({j for own in protos for j in own})
    sel = PrototypeSelector(model, union)
    pairs = [(i, union.index(j)) for (i, _), own in zip(units, protos) for j in own]
    locs = iter(localizer.localize_pairs(xs, sel, pairs))
    noisy = iter(localizer.localize_pairs(noisy_xs, sel, pairs)) if noisy_xs is not None else None
    for own in protos:
        found = []
        for j in own:
            loc = next(locs)
            found.append(_Found(j, loc.heatmap, float(loc.score or 0.0), loc.seconds, loc.ok,
                                next(noisy).heatmap if noisy else None))
        yield found


def _mapped(maps: MapFolder, ids: list[str], units: list[tuple[int, Finding]]) -> Iterator[list[_Found]]:
    """Each unit's map read from ``maps`` (an empty list where the folder has none)."""
    for i, finding in units:
        t0 = time.perf_counter()
        heat = maps.get(ids[i], finding.name)
        yield [] if heat is None else [_Found(-1, heat, float("nan"), time.perf_counter() - t0,
                                              not heatmap_problem(heat))]


def evaluate(ckpt: str | Path, out_dir: str | Path, settings: EvalSettings | None = None, *, device: str = "auto",
             resume: bool = False, overwrite: bool = False, progress: bool = True, dist: DistEnv = DistEnv(),
             **fields) -> EvalResult:
    """Evaluate prototype localization on a dataset; see the module docstring for what is written.

    Args:
        settings: what to measure (:class:`EvalSettings`); ``fields`` set single ones of it, as in
            ``evaluate(ckpt, out, methods=["mdm"], limit=4)``.
        resume: finish an earlier run into ``out_dir`` (same settings); ``overwrite``: redo it.
        dist: under torchrun rank ``r`` takes every ``world``-th image and writes ``results.rankR.csv`` (and
            ``curves.rankR.csv``); rank 0 merges them and writes the summary once all are done. ``resume`` after
            a failed rank redoes only the missing (image, finding, method) groups, with any number of ranks.

    Returns:
        an :class:`EvalResult` whose ``results`` and ``summary`` are DataFrames.
    """
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(EvalSettings)})
    if unknown:
        raise TypeError(f"evaluate() got unknown setting(s) {', '.join(unknown)}")
    cfg = dataclasses.replace(settings, **fields) if settings else EvalSettings(**fields)
    model = load_model(ckpt, dist.device(resolve_device(device))).eval()
    options = EvalOptions(cfg.limit, cfg.seed, cfg.truth, cfg.part_half_width, multilabel=model.multilabel)
    source = dataset_source(cfg.data)
    samples = source.evaluation(model.config, options, (dist.rank, dist.world_size))
    out = Path(out_dir)
    if resume and not ((out / TABLES[0]).exists() or rank_parts(out / TABLES[0])):
        raise UserError(f"`resume`: {out / TABLES[0]} does not exist; run without `resume` first")
    maps = MapFolder(cfg.maps) if cfg.maps is not None else None
    with run_folder(out, TABLES, cfg.record(ckpt), resume=resume, overwrite=overwrite, dist=dist,
                    folders=EXPORTS):
        return _evaluate_in(out, cfg, model, samples, source.per_finding, dist, progress, maps)


def _evaluate_in(out: Path, cfg: EvalSettings, model: PrototypeModel, samples: Iterable, per_finding: bool,
                 dist: DistEnv, progress: bool, maps: MapFolder | None) -> EvalResult:
    """The work of :func:`evaluate` in its open run folder."""
    from tqdm.auto import tqdm

    dataset, methods, percentiles, policy = cfg.dataset, cfg.methods, cfg.percentiles, cfg.prototype_policy
    merged = out / TABLES[0]
    done = {(r["image"], r["finding"], r["method"]) for r in all_rows(merged)}
    results, curves_csv, timings = (dist.part(out / name) for name in TABLES)
    for path, cols in ((results, COLUMNS), (curves_csv, CURVE_COLUMNS), (timings, TIMING_COLUMNS)):
        if not path.exists():
            write_csv(path, cols, [])
    parts = dataset == "cub"
    scorer = _Scorer(model, percentiles, cfg.faithfulness, cfg.deletion_steps, cfg.baseline, parts)
    localizers = {m: create_localizer(m, (cfg.method_configs or {}).get(m)) for m in methods if m != MAPS}
    res = EvalResult(out)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = model_device(model)
    per_search = images_per_search(cfg.batch_images, device, model)
    matched_a_map = any(m == MAPS for _, _, m in done)
    bar = tqdm(total=cfg.limit, desc=f"evaluate {dataset}", unit="img", disable=not progress)
    for chunk in _chunks(samples, per_search):
        real = [s for s in chunk if not isinstance(s, Skipped)]
        res.skipped += [s for s in chunk if isinstance(s, Skipped)]
        res.images += len(real)
        bar.update(len(chunk))
        bar.set_postfix(skipped=len(res.skipped))
        if not real:
            continue
        ids = [s.id for s in real]
        xs = model_input(torch.stack([s.pixels for s in real]).to(device), model.config)
        noisy_xs = xs + cfg.stability_noise * torch.randn(xs.shape, generator=gen).to(device) if parts else None
        if cfg.export:
            with torch.no_grad():
                probs = class_probabilities(model, model(xs).float()).cpu()
        for method in methods:
            units = [(i, f) for i, s in enumerate(real) for f in s.findings if (s.id, f.name, method) not in done]
            if not units:
                continue
            found_all = (_mapped(maps, ids, units) if method == MAPS
                         else _localized(localizers[method], xs, noisy_xs, model, units, policy))
            for (i, finding), found in zip(units, found_all):
                if not found:
                    res.skipped.append(Skipped(ids[i], f"no map of {finding.name} ({map_stem(ids[i], finding.name)}"
                                                       ".pkl or .npy) in the maps folder"))
                    continue
                matched_a_map |= method == MAPS
                scored = {}
                for f in found:
                    rows, curves = scorer.rows(xs[i:i + 1], f.heat, f.score, finding, f.j, f.noisy)
                    scored[f.j] = (rows + [("", "empty", float(not f.ok))], curves, f)
                if policy == "best-dice":
                    best = max(scored, key=lambda j: np.mean([v for p, m, v in scored[j][0] if m == "dice"]))
                    scored = {best: scored[best]}
                unit = dict(image=ids[i], finding=finding.name, method=method)
                if cfg.export and method != MAPS:
                    for _, _, f in scored.values():
                        write_map(out / "chexlocalize" / method, ids[i], finding.name, f.heat,
                                  float(probs[i, finding.class_index]), xs[i], finding.original.shape)
                append_csv(timings, TIMING_COLUMNS, [{**unit, "prototype": j, "seconds": _fmt(f.seconds)}
                                                     for j, (_, _, f) in scored.items()])
                append_csv(results, COLUMNS, [  # last: a unit with its results rows is done
                    {**unit, "prototype": j, "percentile": format_percentile(np.nan if p == "" else p), "metric": m,
                     "value": v if isinstance(v, str) else _fmt(v)}
                    for j, (rows, _, _) in scored.items() for p, m, v in rows])
                append_csv(curves_csv, CURVE_COLUMNS, [
                    {**unit, "prototype": j, "curve": kind, "values": " ".join(_fmt(v) for v in c)}
                    for j, (_, cs, _) in scored.items() for kind, c in cs])
            if method == MAPS and not matched_a_map:
                raise UserError(f"no map in {maps.folder} matches the evaluated images: expected names such as "
                                f"{map_stem(ids[units[0][0]], units[0][1].name)}.pkl, found such as "
                                f"{next(iter(maps.files.values())).name}")
    bar.close()
    shares = dist.all_gather((res.images, res.skipped))  # also: every rank has finished its share
    res.images, res.skipped = sum(n for n, _ in shares), [s for _, sk in shares for s in sk]
    if not dist.is_main:
        return res
    _merge_parts(out)
    if res.skipped:
        atomic_write(out / "skipped.txt", lambda tmp: Path(tmp).write_text(
            "".join(f"{s.id}\t{s.reason}\n" for s in res.skipped)))
    for kind in cfg.export:  # from every map written, by this run or the one it resumes
        for method in methods:
            if (out / kind / method).is_dir():
                write_segmentations(out / kind / method, headline_percentile(percentiles))
    res.results, res.summary = write_summary(out, dataset, len(res.skipped), per_finding)
    return res


def _merge_parts(out: Path) -> None:
    """Fold the ranks' parts into results.csv, curves.csv and timings.csv (a row seen twice is kept once) and
    remove them."""
    for kind, cols, n in (("results", COLUMNS, 6), ("curves", CURVE_COLUMNS, 5), ("timings", TIMING_COLUMNS, 4)):
        if rank_parts(out / f"{kind}.csv"):
            merge_rank_parts(out / f"{kind}.csv", cols, key=lambda r, key=cols[:n]: tuple(r[c] for c in key))


def write_summary(out: Path, dataset: str, skipped: int = 0, by_finding: bool = False
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv, differences.csv (MDM minus each other method, paired), summary.md and the two plots, from
    results.csv and curves.csv: ``(results, summary)`` frames; ``by_finding``: the means per finding too."""
    results = read_results(out / "results.csv")
    summary = summarise(results, by_finding=by_finding, timings=read_timings(out / "timings.csv"))
    numbers = ("value", "ci_low", "ci_high", "difference")
    csv_rows = lambda frame: ({**r, "percentile": format_percentile(r["percentile"]),  # noqa: E731
                               **{k: _fmt(r[k]) for k in numbers if k in r}} for r in frame.to_dict("records"))
    write_csv(out / "summary.csv", SUMMARY_COLUMNS, csv_rows(summary))
    ps = sorted(summary["percentile"].dropna().unique())
    differences = paired_differences(results, headline_percentile(ps)) if ps else None
    if differences is not None and not differences.empty:
        write_csv(out / "differences.csv", DIFFERENCE_COLUMNS, csv_rows(differences))
    md = markdown_tables(summary, dataset, results["image"].nunique(), skipped, list_localizers() + [MAPS],
                         differences)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(md))
    if not summary.empty:
        plot_metrics(out / "metrics_vs_percentile.png", summary)
        curves = read_curves(out / "curves.csv")
        if not curves.empty:
            plot_curves(out / "deletion_insertion.png", curves)
    return results, summary
