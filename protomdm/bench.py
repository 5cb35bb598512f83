"""``protomdm bench``: the paper's MDM schedule against ours, same images, same model, one process."""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import MDMConfig, ModelConfig
from .data.synthetic import SyntheticLesions
from .evaluation.metrics import dice
from .explain import MDMLocalizer, PrototypeSelector
from .models import build_model
from .pipeline import resolve_device
from .data.images import model_input


@dataclass
class BenchRow:
    schedule: str
    seconds_per_image: float
    peak_memory_mb: float
    steps: float
    dice_p90: float = 1.0
    pearson_r: float = 1.0


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide high-water mark (Linux: KiB)


def run_bench(backbone: str = "tiny", img_size: int = 64, device: str = "cpu", images: int = 2,
              ref_steps: int = 300, mdm: MDMConfig | None = None, seed: int = 0, progress: bool = True
              ) -> list[BenchRow]:
    """Time the paper's schedule (each mask alone, ``ref_steps`` Adam steps) and ours (``mdm``: all masks of all
    images in one batch, early stopping) on ``images`` synthetic images and a ProtoPNet with a ``backbone``
    (random weights), and measure their agreement (Dice of the p90 masks, Pearson r of the heatmaps)."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone=backbone, class_names=("disk", "square", "cross"), prototypes_per_class=2,
                                    img_size=(img_size, img_size), mean=(0.5,) * 3, std=(0.25,) * 3)).to(dev).eval()
    data = SyntheticLesions(("disk", "square", "cross"), n=images, size=img_size, seed=seed + 1)
    x = model_input(torch.stack([data[i][0] for i in range(images)]), model.config).to(dev)
    sel = PrototypeSelector(model, 0)
    ours_cfg = dataclasses.replace(mdm or MDMConfig(), steps=ref_steps)
    paper = MDMLocalizer(dataclasses.replace(ours_cfg, tol=None), progress=progress)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    sync()
    t0 = time.perf_counter()
    ref = [paper.localize_sequential(x[i], sel) for i in range(images)]
    sync()
    t_ref = (time.perf_counter() - t0) / images
    mem_ref = _peak_mb(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    ours = [row[0] for row in MDMLocalizer(ours_cfg, progress=progress).localize_many(x, sel)]
    sync()
    t_ours = (time.perf_counter() - t0) / images
    agree = [float(dice(r.binary(90), o.binary(90))) for r, o in zip(ref, ours)]
    corr = [float(np.corrcoef(r.heatmap.ravel(), o.heatmap.ravel())[0, 1]) for r, o in zip(ref, ours)]
    return [BenchRow("paper (sequential)", t_ref, mem_ref, ref_steps),
            BenchRow("ours (batched, early stop)", t_ours, _peak_mb(dev), float(np.mean([o.steps for o in ours])),
                     float(np.mean(agree)), float(np.nanmean(corr)))]


def format_table(rows: list[BenchRow], note: str) -> str:
    ref = rows[0].seconds_per_image
    lines = [note, f"{'schedule':<28} {'s/image':>9} {'speed-up':>9} {'peak MB':>9} {'steps':>7} {'Dice p90':>9} {'Pearson r':>9}"]
    for r in rows:
        lines.append(f"{r.schedule:<28} {r.seconds_per_image:>9.2f} {ref / r.seconds_per_image:>8.1f}x "
                     f"{r.peak_memory_mb:>9.0f} {r.steps:>7.0f} {r.dice_p90:>9.3f} {r.pearson_r:>9.3f}")
    return "\n".join(lines)
