"""``protomdm bench``: where an MDM localization's time goes, the paper's schedule against ours, same images, same
model, one process.

What is counted does not depend on the machine: model passes (a forward and a backward pass to the input of one
masked image) per localization, against the paper's 27 masks x 2000 steps = 54,000, and passes per mask. What is
timed is set against the model itself: the *overhead ratio* is a search's seconds over the seconds that the same
number of bare forward and backward passes of the same model take, in batches of the size the search starts with
(timed before and after the searches, their mean), so 1.0 means every step is as fast as the model allows.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import ModelConfig
from ..data.images import LoadedImage, model_input, read_image, to_model_input
from ..data.synthetic import SHAPES, SyntheticLesions
from ..device import resolve_device, synchronize
from ..errors import UserError
from ..evaluation.metrics import dice
from ..explain import MDMLocalizer, PrototypeSelector
from ..explain.localization import eval_mode
from ..explain.mdm import MDMConfig, autocast, images_per_search
from ..explain.selectors import Selector, choose_prototype
from ..models import PrototypeModel, architecture_class, build_model, load_model
from ..models.frozen import frozen

DEMO_MODEL = Path("protomdm-demo/model/best.pt")  # where `protomdm demo` leaves its trained model
PAPER_PASSES = 27 * 2000  # the paper's masks x steps


@dataclass
class BenchRow:
    schedule: str
    seconds: float  # per localization
    passes: float  # model passes (forward + backward of one masked image) per localization
    steps: float  # passes per mask, mean
    overhead: float  # seconds / (passes x a bare pass's seconds at the search's batch size)
    peak_memory_mb: float
    dice_p90: float = 1.0  # agreement with the paper's full schedule: mean ...
    dice_p90_min: float = 1.0  # ... and min of the p90 masks' Dice
    pearson_r: float = 1.0  # mean Pearson r of the heatmaps
    loss_ratio: float = 1.0  # the final MDM loss over the full schedule's, mean (> 1: a worse optimum)
    note: str = ""
    precision: str = "fp32"  # of the passes (precision auto resolved)

    @property
    def passes_per_second(self) -> float:
        return self.passes / self.seconds if self.seconds > 0 else float("nan")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide high-water mark (Linux: KiB)


def bench_model(architecture: str, backbone: str, img_size: int, ckpt: str | None, seed: int,
                progress: bool = False) -> tuple[PrototypeModel, str]:
    """The model to time and what it is: a checkpoint; for the demo's settings (ProtoPNet, tiny backbone, 64 px)
    the demo's trained model (``protomdm-demo/model/best.pt`` if `protomdm demo` left one, else trained on the spot,
    about a minute on 2 CPU cores), since only a trained model gives meaningful agreement figures; else a model with
    random weights (timing only)."""
    if ckpt:
        return load_model(ckpt), f"checkpoint {ckpt}"
    from ..training import train
    from .demo import demo_config

    cfg = demo_config()
    if (architecture, backbone, img_size) == (cfg.model.architecture, cfg.model.backbone, cfg.model.img_size[0]):
        if DEMO_MODEL.is_file():
            return load_model(DEMO_MODEL), f"the demo's synthetic ProtoPNet ({DEMO_MODEL}) at {img_size}px"
        with tempfile.TemporaryDirectory() as tmp:
            train(dataclasses.replace(cfg, device="cpu"), tmp, progress=progress)
            return load_model(Path(tmp) / "best.pt"), f"the demo's synthetic ProtoPNet (trained) at {img_size}px"
    torch.manual_seed(seed)
    grey = architecture_class(architecture).multilabel_only  # chest-like: grey images with findings
    model = build_model(ModelConfig(architecture=architecture, backbone=backbone, class_names=SHAPES[:3],
                                    prototypes_per_class=2, img_size=(img_size, img_size), in_channels=1 if grey else 3,
                                    mean=(0.5,) * (1 if grey else 3), std=(0.25,) * (1 if grey else 3)))
    return model, (f"{architecture}/{backbone} with random weights at {img_size}px (timing only: agreement is "
                   "meaningless)")


def bare_pass_seconds(selector: Selector, x: torch.Tensor, batch: int, precision: str = "fp32",
                      repeats: int = 3, mdm: MDMConfig | None = None, min_seconds: float = 1.0) -> float:
    """Seconds of one bare forward + backward (to the input) pass of one image, in batches of ``batch`` copies of
    ``x: (1, C, H, W)``, the model frozen and laid out as a search with ``mdm`` (default settings) runs it, the passes
    in ``precision``: the median over at least ``repeats`` batches and ``min_seconds`` of them (three batches of 27
    of the demo model, 50 ms, moved the overhead ratio by several percent between runs)."""
    cfg, dev = mdm or MDMConfig(), x.device
    xb = x.expand(batch, -1, -1, -1).clone()
    if cfg.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with eval_mode(selector.model), frozen(selector.model, cfg.fold_batchnorm, cfg.channels_last):
        def once() -> float:
            t0 = time.perf_counter()
            xr = xb.clone().requires_grad_()
            with autocast(dev, precision):
                out = selector(xr)
            torch.autograd.grad(out.float().sum(), xr)
            synchronize(dev)
            return time.perf_counter() - t0

        once()  # warm-up
        times: list[float] = []
        while len(times) < repeats or sum(times) < min_seconds:
            times.append(once())
    return statistics.median(times) / batch


def bench_images(inputs: Sequence[str | Path], n: int) -> list[LoadedImage]:
    """The first ``n`` images of ``inputs`` (files, or folders searched as folder runs search them), read."""
    from .folder import find_inputs

    paths = [q for p in inputs for q in (find_inputs(p) if Path(p).is_dir() else [Path(p)])][:n]
    if not paths:
        raise UserError(f"no images found in {', '.join(map(str, inputs))}")
    return [read_image(p) for p in paths]


def run_bench(architecture: str = "protopnet", backbone: str = "tiny", img_size: int = 64, device: str = "auto",
              images: int = 2, ref_steps: int = 100, mdm: MDMConfig | None = None, seed: int = 0,
              progress: bool = True, ckpt: str | None = None, batch_images: int | None = None,
              inputs: Sequence[str | Path] | None = None) -> tuple[list[BenchRow], str]:
    """Time MDM on ``images`` synthetic images (or the first ``images`` of ``inputs``, one's own, at the model's
    input size), each image's top prototype:

    - the paper's schedule as published (each of the 27 masks alone, 2000 Adam steps): ``ref_steps`` steps of every
      mask are timed and projected to the full schedule;
    - the same schedule with all masks in one batch (identical result): run in full, one image at a time, it is the
      reference that agreement is measured against;
    - ours (``mdm``, default: the fast schedule), one image at a time as ``protomdm localize`` runs it;
    - ours with ``batch_images`` images per search (default: all of them), as folder runs and evaluation run it.

    Agreement: Dice of the p90 masks and Pearson r of the heatmaps against the full schedule. Returns the rows and
    a description of the model.
    """
    dev = resolve_device(device)
    cfg = mdm or MDMConfig()
    own = bench_images(inputs, images) if inputs else []  # read first: a bad input fails before any training
    model, what = bench_model(architecture, backbone, img_size, ckpt, seed, progress)
    model = model.to(dev).eval()
    if own:
        x = torch.cat([to_model_input(im, model.config) for im in own]).to(dev)
        images = len(x)
    else:
        classes = model.class_names if set(model.class_names) <= set(SHAPES) else SHAPES[:3]
        data = SyntheticLesions(classes, n=images, size=model.config.img_size[0], channels=model.config.in_channels,
                                multilabel=model.multilabel_only, seed=seed + 1)
        x = model_input(torch.stack([data[i][0] for i in range(images)]), model.config).to(dev)
    with torch.no_grad():
        protos = [choose_prototype(model, x[i:i + 1], None, None) for i in range(images)]
    sels = [PrototypeSelector(model, j) for j in protos]
    n_masks = len(cfg.sizes)
    per_pass: dict[tuple[int, str], list[float]] = {}  # (batch, precision): a bare pass's seconds, each time timed

    def time_bare(batch: int, precision: str) -> None:
        per_pass.setdefault((batch, precision), []).append(
            bare_pass_seconds(sels[0], x[:1], batch, precision, mdm=cfg))

    def bare(batch: int, precision: str) -> float:
        """A bare pass's seconds: the mean of its timings before and after the searches (the machine's speed
        drifts over a bench; timed once, after them, the overhead ratio moved by up to 0.1 between runs)."""
        if (batch, precision) not in per_pass:
            time_bare(batch, precision)
        return float(np.mean(per_pass[batch, precision]))

    time_bare(1, "fp32")  # before the searches: the references' batches (fp32) and the precisions ours may use
    for precision in dict.fromkeys(("fp32", "bf16") if cfg.precision == "auto" else ("fp32", cfg.precision)):
        time_bare(n_masks, precision)

    def timed(fn, n: int) -> tuple[list, float, float]:
        """Results of ``fn()``, seconds per localization over ``n`` localizations, peak memory (MB)."""
        synchronize(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        out = fn()
        synchronize(dev)
        return out, (time.perf_counter() - t0) / n, _peak_mb(dev)

    def row(name: str, locs, seconds: float, mem: float, batch: int, note: str = "", ref=None,
            steps: int | None = None) -> BenchRow:
        """``steps``: the schedule's steps per mask that ``seconds`` stand for, where ``locs`` took fewer."""
        if steps is None:
            passes = float(np.mean([lo.settings["passes"] for lo in locs]))
            per_mask = float(np.mean([lo.settings.get("mean_steps", lo.steps) for lo in locs]))
        else:
            passes, per_mask = float(n_masks * steps), float(steps)
        precision = locs[0].settings.get("precision_used", "fp32")
        r = BenchRow(name, seconds, passes, per_mask, seconds / (passes * bare(batch, precision)), mem, note=note,
                     precision=precision)
        if ref is not None:
            agree = [float(dice(a.binary(90), b.binary(90))) for a, b in zip(ref, locs)]
            corr = [float(np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1]) for a, b in zip(ref, locs)
                    if a.heatmap.std() > 0 and b.heatmap.std() > 0]
            r.dice_p90, r.dice_p90_min = float(np.mean(agree)), float(np.min(agree))
            r.pearson_r = float(np.mean(corr)) if corr else float("nan")
            ratios = [b.settings["final_loss"] / a.settings["final_loss"] for a, b in zip(ref, locs)
                      if a.settings.get("final_loss") and b.settings.get("final_loss") is not None]
            r.loss_ratio = float(np.mean(ratios)) if ratios else float("nan")
        return r

    full_cfg = dataclasses.replace(cfg.full_schedule(), precision="fp32")  # the reference: the paper's, in fp32
    short = MDMLocalizer(dataclasses.replace(full_cfg, steps=ref_steps), progress=progress)
    seq, t_seq, mem_seq = timed(lambda: [short.localize_sequential(x[i], sels[i]) for i in range(images)], images)
    full = MDMLocalizer(full_cfg, progress=progress)
    ref, t_full, mem_full = timed(lambda: [full.localize(x[i], sels[i]) for i in range(images)], images)
    ours_loc = MDMLocalizer(cfg, progress=progress)
    ours, t_ours, mem_ours = timed(lambda: [ours_loc.localize(x[i], sels[i]) for i in range(images)], images)
    per_search = batch_images or images
    union = PrototypeSelector(model, sorted(set(protos)))
    pairs = [(i, union.indices.index(j)) for i, j in enumerate(protos)]
    many, t_many, mem_many = timed(lambda: [loc for s in range(0, images, per_search) for loc in ours_loc.localize_pairs(
        x[s:s + per_search], union, [(i - s, k) for i, k in pairs[s:s + per_search]])], images)
    for key in list(per_pass):  # and after them
        time_bare(*key)
    paper = row("paper (sequential)", seq, t_seq * cfg.steps / ref_steps, mem_seq, 1,
                f"timed over {ref_steps} steps, projected to {cfg.steps}", steps=cfg.steps)
    rows = [paper, row("paper schedule, batched", ref, t_full, mem_full, n_masks),
            row("ours", ours, t_ours, mem_ours, n_masks, ref=ref),
            row(f"ours, {per_search} images/search", many, t_many, mem_many, n_masks, ref=ref)]
    default = images_per_search(None, dev, model, n_masks)  # what folder runs would share a search with
    return rows, (f"{what}, on {dev} ({default} images per search by default), {images} "
                  f"{'image(s) from --input' if inputs else 'synthetic image(s)'}")


def format_table(rows: list[BenchRow], note: str) -> str:
    lines = [note, f"{'schedule':<26} {'s/loc':>8} {'passes':>7} {'vs paper':>8} {'steps':>6} {'passes/s':>9} "
                   f"{'overhead':>8} {'peak MB':>8} {'Dice p90':>8} {'min':>6} {'Pearson r':>9} {'loss/full':>9} "
                   f"{'prec':>4}  note"]
    for r in rows:
        lines.append(f"{r.schedule:<26} {r.seconds:>8.2f} {r.passes:>7.0f} {PAPER_PASSES / r.passes:>7.1f}x "
                     f"{r.steps:>6.0f} {r.passes_per_second:>9.0f} {r.overhead:>8.2f} {r.peak_memory_mb:>8.0f} "
                     f"{r.dice_p90:>8.3f} {r.dice_p90_min:>6.3f} {r.pearson_r:>9.3f} {r.loss_ratio:>9.3f} "
                     f"{r.precision:>4}  {r.note}")
    return "\n".join(lines)


def rows_record(rows: list[BenchRow], note: str) -> dict:
    """The bench's rows as plain data (``--json``), with passes per second."""
    return {"note": note, "paper_passes": PAPER_PASSES,
            "rows": [{**dataclasses.asdict(r), "passes_per_second": r.passes_per_second} for r in rows]}
