"""``protomdm bench``: the paper's MDM schedule against ours, same images, same model, one process."""

from __future__ import annotations

import dataclasses
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import MDMConfig, ModelConfig
from .data.images import model_input
from .data.synthetic import SHAPES, SyntheticLesions
from .evaluation.metrics import dice
from .explain import MDMLocalizer, PrototypeSelector
from .models import PrototypeModel, build_model, load_model
from .pipeline import choose_prototype, resolve_device

PAPER_STEPS = 2000


@dataclass
class BenchRow:
    schedule: str
    seconds_per_image: float
    peak_memory_mb: float
    steps: float
    full_schedule_seconds: float  # seconds per image projected to the full schedule (measured when run in full)
    dice_p90: float = 1.0
    pearson_r: float = 1.0


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide high-water mark (Linux: KiB)


def bench_model(backbone: str, img_size: int, ckpt: str | None, seed: int, progress: bool = False
                ) -> tuple[PrototypeModel, str]:
    """The model to time and what it is: a checkpoint; for the tiny backbone at the demo's size, the demo's
    synthetic ProtoPNet trained on the spot (about half a minute on 2 CPU cores), since only a trained model gives
    meaningful agreement figures; else a ProtoPNet with random weights on ``backbone`` (timing only)."""
    if ckpt:
        return load_model(ckpt), f"checkpoint {ckpt}"
    from .demo import demo_config
    from .training import train

    cfg = demo_config()
    if backbone == cfg.model.backbone and img_size == cfg.model.img_size[0]:
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, tmp, progress=progress)
            return load_model(Path(tmp) / "best.pt"), f"the demo's synthetic ProtoPNet (trained) at {img_size}px"
    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone=backbone, class_names=("disk", "square", "cross"), prototypes_per_class=2,
                                    img_size=(img_size, img_size), mean=(0.5,) * 3, std=(0.25,) * 3))
    return model, f"ProtoPNet/{backbone} with random weights at {img_size}px (timing only: agreement is meaningless)"


def run_bench(backbone: str = "tiny", img_size: int = 64, device: str = "cpu", images: int = 2,
              ref_steps: int = 300, mdm: MDMConfig | None = None, seed: int = 0, progress: bool = True,
              ckpt: str | None = None) -> tuple[list[BenchRow], str]:
    """Time the paper's schedule (each mask alone, ``ref_steps`` Adam steps) and ours (all masks of all images in
    one batch; ``mdm.steps_taken`` of every ``mdm.steps`` steps taken, the rest extrapolated, scaled to ``ref_steps``)
    on ``images`` synthetic images, and measure their agreement (Dice of the p90 masks, Pearson r of the
    heatmaps). Seconds are also projected to the full schedules (the paper's 2000 steps, ours ``mdm.steps``).
    Returns the rows and a description of the model."""
    dev = resolve_device(device)
    cfg = mdm or MDMConfig()
    model, what = bench_model(backbone, img_size, ckpt, seed, progress)
    model = model.to(dev).eval()
    classes = model.class_names if set(model.class_names) <= set(SHAPES) else ("disk", "square", "cross")
    size = model.config.img_size[0]
    data = SyntheticLesions(classes, n=images, size=size, channels=model.config.in_channels, seed=seed + 1)
    x = model_input(torch.stack([data[i][0] for i in range(images)]), model.config).to(dev)
    with torch.no_grad():
        protos = [choose_prototype(model, x[i:i + 1], None, None) for i in range(images)]
    share = cfg.steps_taken / cfg.steps  # ours takes this share of the schedule's steps (400 / 2000)
    ours_cfg = dataclasses.replace(cfg, steps=ref_steps, extrapolate_after=max(1, round(ref_steps * share)))
    paper = MDMLocalizer(dataclasses.replace(cfg, steps=ref_steps, extrapolate_after=None, tol=None),
                         progress=progress)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    sync()
    t0 = time.perf_counter()
    ref = [paper.localize_sequential(x[i], PrototypeSelector(model, j)) for i, j in enumerate(protos)]
    sync()
    t_ref = (time.perf_counter() - t0) / images
    mem_ref = _peak_mb(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    loc = MDMLocalizer(ours_cfg, progress=progress)
    # one batched search per prototype explained, all images that explain it together
    ours: list = [None] * images
    for j in sorted(set(protos)):
        idx = [i for i, p in enumerate(protos) if p == j]
        for i, row in zip(idx, loc.localize_many(x[idx], PrototypeSelector(model, j))):
            ours[i] = row[0]
    sync()
    t_ours = (time.perf_counter() - t0) / images
    agree = [float(dice(r.binary(90), o.binary(90))) for r, o in zip(ref, ours)]
    corr = [float(np.corrcoef(r.heatmap.ravel(), o.heatmap.ravel())[0, 1]) if r.heatmap.std() > 0 and
            o.heatmap.std() > 0 else float("nan") for r, o in zip(ref, ours)]
    steps_ours = float(np.mean([o.steps for o in ours]))
    return [BenchRow("paper (sequential)", t_ref, mem_ref, ref_steps, t_ref / ref_steps * PAPER_STEPS),
            BenchRow("ours (batched, extrapolated)" if share < 1 else "ours (batched)", t_ours,
                     _peak_mb(dev), steps_ours, t_ours / max(steps_ours, 1) * cfg.steps_taken,
                     float(np.mean(agree)), float(np.mean(corr)))], what


def format_table(rows: list[BenchRow], note: str) -> str:
    ref, ref_full = rows[0].seconds_per_image, rows[0].full_schedule_seconds
    lines = [note, f"{'schedule':<30} {'s/image':>9} {'speed-up':>9} {'full s/img':>11} {'speed-up':>9} "
                   f"{'peak MB':>8} {'steps':>6} {'Dice p90':>9} {'Pearson r':>9}"]
    for r in rows:
        lines.append(f"{r.schedule:<30} {r.seconds_per_image:>9.2f} {ref / r.seconds_per_image:>8.1f}x "
                     f"{r.full_schedule_seconds:>11.1f} {ref_full / r.full_schedule_seconds:>8.1f}x "
                     f"{r.peak_memory_mb:>8.0f} {r.steps:>6.0f} {r.dice_p90:>9.3f} {r.pearson_r:>9.3f}")
    return "\n".join(lines)
