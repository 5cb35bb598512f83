"""``protomdm evaluate``: localize the prototypes of each ground-truth finding with every method and score them.

Writes to the output folder:

- ``results.csv``: one row per (image, finding, prototype, method, percentile, metric) with its value: Dice, IoU,
  PPV and sensitivity of the top-percentile mask per percentile, and, percentile-free, the pointing game (0/1), the
  score on the image and on the image blended by the heatmap (Average Drop/Increase's ``Y`` and ``O``), the
  deletion and insertion AUC (curves normalised by the unmasked score) and whether the heatmap was empty. On CUB also the parts each prototype's region covers, on the image and under noise (part
  consistency and stability). :func:`~protomdm.evaluation.results.read_results` reads it as a typed DataFrame.
- ``curves.csv``: the deletion/insertion curves; ``timings.csv``: each localizer's seconds per localisation.
- ``summary.csv`` and ``summary.md``: means per method x percentile (per finding too on NIH and tables), in the layout of
  the MDM paper's tables; ``metrics_vs_percentile.png`` (its Figure 5) and ``deletion_insertion.png``.
- ``skipped.txt``: images listed by the dataset but missing or unreadable.

A run is resumable: rows are appended per (image, finding, method) once complete, and ``resume`` skips those.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..config import DataConfig, MDMConfig, to_dict
from ..data.groundtruth import Skipped
from ..data.images import model_input
from ..data.sources import EvalOptions, dataset_source, list_datasets
from ..device import resolve_device
from ..distributed import DistEnv, rank_parts
from ..errors import UserError
from ..explain import PrototypeSelector
from ..explain.localization import model_device
from ..explain.mdm import images_per_search
from ..explain.perturbation import Perturbation
from ..explain.registry import create_localizer, list_localizers
from ..files import append_csv, atomic_write, read_csv, write_csv
from ..geometry import regions
from ..models import PrototypeModel, load_model
from ..runfolder import run_folder
from . import metrics as M
from .faithfulness import deletion_insertion, heatmap_masked_scores
from .plots import plot_curves, plot_metrics
from .results import (COLUMNS, CURVE_COLUMNS, TIMING_COLUMNS, format_percentile, read_curves, read_results,
                      read_timings)
from .tables import SUMMARY_COLUMNS, markdown_tables, summarise

POLICIES = ("first", "best-dice", "all-of-class")
MASK_METRICS = tuple(M.MASK_METRICS)
REGION_IOUS = (0.1, 0.3)
TABLES = ("results.csv", "curves.csv", "timings.csv")  # results first: a unit with its results rows is done


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


def parse_methods(text: str | Sequence[str]) -> list[str]:
    methods = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    known = list_localizers()
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise UserError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    return methods


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
        mdm: MDM's settings. ``truth``/``part_half_width``: CUB's ground truth (``segmentation`` or ``parts``).
        faithfulness: also score deletion/insertion (``deletion_steps`` steps) and Average Drop/Increase,
            masking with ``baseline``. ``stability_noise``: CUB's part stability noise.
        batch_images: images sharing one localizer search (MDM trains their masks together); default 8 on a GPU
            and 4 on the CPU (measured there: 1.24x faster than one at a time).
    """

    dataset: str = "synthetic"
    root: str | Path | None = None
    methods: Sequence[str] = ("upsample", "mdm")
    percentiles: Sequence[float] = (70, 80, 90, 95)
    limit: int | None = None
    prototype_policy: str | None = None
    seed: int = 1
    mdm: MDMConfig | None = None
    truth: str = "segmentation"
    part_half_width: int = 16
    faithfulness: bool = True
    deletion_steps: int = 16
    baseline: str = "zero"
    stability_noise: float = 0.2
    batch_images: int | None = None
    data: DataConfig | None = None

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
        self.methods = parse_methods(self.methods)
        self.percentiles = parse_percentiles(self.percentiles)
        if self.deletion_steps < 1:
            raise UserError(f"deletion/insertion curves need at least 1 step, got {self.deletion_steps}")
        Perturbation(self.baseline)  # an unknown baseline is refused here
        images_per_search(self.batch_images, torch.device("cpu"))
        self.prototype_policy = self.prototype_policy or ("best-dice" if self.dataset == "nih" else "first")
        if self.prototype_policy not in POLICIES:
            raise UserError(f"unknown prototype policy {self.prototype_policy!r}; choose one of {', '.join(POLICIES)}")

    def record(self, ckpt: str | Path) -> dict[str, Any]:
        """The settings that decide the results, as ``run.json`` keeps them."""
        return {"checkpoint": str(ckpt), "dataset": self.dataset, "data": to_dict(self.data),
                "methods": self.methods, "percentiles": self.percentiles, "limit": self.limit,
                "policy": self.prototype_policy, "seed": self.seed, "truth": self.truth,
                "part_half_width": self.part_half_width, "faithfulness": self.faithfulness,
                "deletion_steps": self.deletion_steps, "baseline": self.baseline,
                "mdm": dataclasses.asdict(self.mdm or MDMConfig()) if "mdm" in self.methods else None}


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
        self.region_percentile = 90.0 if 90.0 in percentiles else percentiles[len(percentiles) // 2]

    def rows(self, x: torch.Tensor, heat: np.ndarray, score: float, finding, j: int,
             noisy_heat: np.ndarray | None) -> tuple[list[tuple], list[tuple]]:
        """``(metric rows (percentile, metric, value), curve rows (kind, values))`` for prototype ``j``."""
        out, curves = [], []
        vals = M.localisation_scores(heat, finding.truth, self.percentiles)
        for i, p in enumerate(self.percentiles):
            out += [(p, m, float(vals[m][i])) for m in MASK_METRICS]
        out.append(("", "pointing_game", float(M.pointing_game(heat, finding.truth))))
        if finding.boxes:  # every region of the mask against every ground-truth box of the finding
            found = [r.box for r in regions(heat, self.region_percentile)]
            out += [(self.region_percentile, f"region_hit_iou{t:g}", M.region_hit_rate(found, finding.boxes, t))
                    for t in REGION_IOUS]
        if self.faithfulness:
            sel = PrototypeSelector(self.model, j)
            out.append(("", "score", score))
            out.append(("", "score_heatmap_masked", float(heatmap_masked_scores(sel, x[0], heat[None],
                                                                               self.baseline)[0])))
            dele, ins = deletion_insertion(sel, x[0], heat, self.steps, self.baseline)
            full = score if abs(score) > 1e-12 else 1.0
            dele, ins = dele / full, ins / full
            out += [("", "deletion_auc", M.curve_auc(dele)), ("", "insertion_auc", M.curve_auc(ins))]
            curves += [("deletion", dele), ("insertion", ins)]
        if self.parts and finding.parts is not None:
            region = M.top_percentile_mask(heat, self.region_percentile)
            bits = lambda h: "".join("1" if b else "0" for b in h)  # noqa: E731
            out.append((self.region_percentile, "part_hits", bits(M.part_hits(region, finding.parts))))
            out.append((self.region_percentile, "part_visible", bits(finding.parts[:, 2] > 0)))
            if noisy_heat is not None:
                noisy = M.top_percentile_mask(noisy_heat, self.region_percentile)
                out.append((self.region_percentile, "part_hits_noisy", bits(M.part_hits(noisy, finding.parts))))
        return out, curves


def evaluate(ckpt: str | Path, out_dir: str | Path, settings: EvalSettings | None = None, *, device: str = "auto",
             resume: bool = False, overwrite: bool = False, progress: bool = True, dist: DistEnv = DistEnv(),
             **fields) -> EvalResult:
    """Evaluate prototype localisation on a dataset; see the module docstring for what is written.

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
    options = EvalOptions(cfg.limit, cfg.seed, cfg.truth, cfg.part_half_width,
                          multilabel=model.config.architecture == "xprotonet" or model.config.multilabel)
    source = dataset_source(cfg.data)
    samples = source.evaluation(model.config, options, (dist.rank, dist.world_size))
    out = Path(out_dir)
    if resume and not ((out / TABLES[0]).exists() or rank_parts(out / TABLES[0])):
        raise UserError(f"`resume`: {out / TABLES[0]} does not exist; run without `resume` first")
    with run_folder(out, TABLES, cfg.record(ckpt), resume=resume, overwrite=overwrite, dist=dist):
        return _evaluate_in(out, cfg, model, samples, source.per_finding, dist, progress)


def _evaluate_in(out: Path, cfg: EvalSettings, model: PrototypeModel, samples: Iterable, per_finding: bool,
                 dist: DistEnv, progress: bool) -> EvalResult:
    """The work of :func:`evaluate` in its open run folder."""
    from tqdm.auto import tqdm

    dataset, methods, percentiles, policy = cfg.dataset, cfg.methods, cfg.percentiles, cfg.prototype_policy
    merged = out / TABLES[0]
    done = {(r["image"], r["finding"], r["method"]) for p in [merged, *rank_parts(merged)] for r in read_csv(p)}
    results, curves_csv, timings = (dist.part(out / name) for name in TABLES)
    for path, cols in ((results, COLUMNS), (curves_csv, CURVE_COLUMNS), (timings, TIMING_COLUMNS)):
        if not path.exists():
            write_csv(path, cols, [])
    parts = dataset == "cub"
    scorer = _Scorer(model, percentiles, cfg.faithfulness, cfg.deletion_steps, cfg.baseline, parts)
    localizers = {m: create_localizer(m, cfg.mdm) for m in methods}
    res = EvalResult(out)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = model_device(model)
    per_search = images_per_search(cfg.batch_images, device)
    bar = tqdm(total=cfg.limit, desc=f"evaluate {dataset}", unit="img", disable=not progress)
    for chunk in _chunks(samples, per_search):
        real = [s for s in chunk if not isinstance(s, Skipped)]
        res.skipped += [s for s in chunk if isinstance(s, Skipped)]
        res.images += len(real)
        bar.update(len(chunk))
        bar.set_postfix(skipped=len(res.skipped))
        if not real:
            continue
        xs = model_input(torch.stack([s.pixels for s in real]).to(device), model.config)
        noisy_xs = xs + cfg.stability_noise * torch.randn(xs.shape, generator=gen).to(device) if parts else None
        for method in methods:
            # every (image, finding) of the chunk not done yet, with the prototypes it explains: one search
            units = [(i, f, own[:1] if policy == "first" else own)
                     for i, s in enumerate(real) for f in s.findings
                     for own in [model.prototypes_of_class(f.class_index)] if (s.id, f.name, method) not in done]
            if not units:
                continue
            union = sorted({j for _, _, ps in units for j in ps})
            sel = PrototypeSelector(model, union)
            pairs = [(i, union.index(j)) for i, _, ps in units for j in ps]
            locs = iter(localizers[method].localize_pairs(xs, sel, pairs))
            noisy = iter(localizers[method].localize_pairs(noisy_xs, sel, pairs)) if parts else None
            for i, finding, protos in units:
                per_proto, seconds = {}, {}
                for j in protos:
                    loc = next(locs)
                    rows, curves = scorer.rows(xs[i:i + 1], loc.heatmap, float(loc.score or 0.0), finding, j,
                                               next(noisy).heatmap if noisy else None)
                    per_proto[j] = (rows + [("", "empty", float(not loc.ok))], curves)
                    seconds[j] = loc.seconds
                if policy == "best-dice":
                    best = max(per_proto, key=lambda j: np.mean([v for p, m, v in per_proto[j][0] if m == "dice"]))
                    per_proto = {best: per_proto[best]}
                unit = dict(image=real[i].id, finding=finding.name, method=method)
                append_csv(timings, TIMING_COLUMNS, [{**unit, "prototype": j, "seconds": _fmt(seconds[j])}
                                                     for j in per_proto])
                append_csv(results, COLUMNS, [  # last: a unit with its results rows is done
                    {**unit, "prototype": j, "percentile": format_percentile(np.nan if p == "" else p), "metric": m,
                     "value": v if isinstance(v, str) else _fmt(v)}
                    for j, (rows, _) in per_proto.items() for p, m, v in rows])
                append_csv(curves_csv, CURVE_COLUMNS, [
                    {**unit, "prototype": j, "curve": kind, "values": " ".join(_fmt(v) for v in c)}
                    for j, (_, cs) in per_proto.items() for kind, c in cs])
    bar.close()
    shares = dist.all_gather((res.images, res.skipped))  # also: every rank has finished its share
    res.images, res.skipped = sum(n for n, _ in shares), [s for _, sk in shares for s in sk]
    if not dist.is_main:
        return res
    _merge_parts(out)
    if res.skipped:
        atomic_write(out / "skipped.txt", lambda tmp: Path(tmp).write_text(
            "".join(f"{s.id}\t{s.reason}\n" for s in res.skipped)))
    res.results, res.summary = write_summary(out, dataset, len(res.skipped), per_finding)
    return res


def _merge_parts(out: Path) -> None:
    """Fold the ranks' parts into results.csv, curves.csv and timings.csv (a row seen twice is kept once) and
    remove them."""
    for kind, cols, key_len in (("results", COLUMNS, 6), ("curves", CURVE_COLUMNS, 5), ("timings", TIMING_COLUMNS, 4)):
        parts = rank_parts(out / f"{kind}.csv")
        if not parts:
            continue
        rows = {tuple(r[c] for c in cols[:key_len]): r for path in [out / f"{kind}.csv", *parts]
                for r in read_csv(path)}
        write_csv(out / f"{kind}.csv", cols, rows.values())
        for p in parts:
            p.unlink()


def write_summary(out: Path, dataset: str, skipped: int = 0, by_finding: bool = False
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv, summary.md and the two plots, from results.csv and curves.csv: ``(results, summary)`` frames;
    ``by_finding``: the means per finding too."""
    results = read_results(out / "results.csv")
    summary = summarise(results, by_finding=by_finding, timings=read_timings(out / "timings.csv"))
    write_csv(out / "summary.csv", SUMMARY_COLUMNS, (
        {**r, "percentile": format_percentile(r["percentile"]), "value": _fmt(r["value"])}
        for r in summary.to_dict("records")))
    md = markdown_tables(summary, dataset, results["image"].nunique(), skipped, list_localizers())
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(md))
    if not summary.empty:
        plot_metrics(out / "metrics_vs_percentile.png", summary)
        curves = read_curves(out / "curves.csv")
        if not curves.empty:
            plot_curves(out / "deletion_insertion.png", curves)
    return results, summary
