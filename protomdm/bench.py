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
from .device import resolve_device
from .explain.selectors import choose_prototype

DEMO_MODEL = Path("protomdm-demo/model/best.pt")  # where `protomdm demo` leaves its trained model


@dataclass
class BenchRow:
    schedule: str
    seconds_per_image: float  # one image at a time, as `protomdm localize` runs it
    peak_memory_mb: float
    steps: float
    dice_p90: float = 1.0  # agreement with the paper's full schedule
    pearson_r: float = 1.0
    note: str = ""


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
    from .demo import demo_config
    from .training import train

    cfg = demo_config()
    if (architecture, backbone, img_size) == (cfg.model.architecture, cfg.model.backbone, cfg.model.img_size[0]):
        if DEMO_MODEL.is_file():
            return load_model(DEMO_MODEL), f"the demo's synthetic ProtoPNet ({DEMO_MODEL}) at {img_size}px"
        with tempfile.TemporaryDirectory() as tmp:
            train(dataclasses.replace(cfg, device="cpu"), tmp, progress=progress)
            return load_model(Path(tmp) / "best.pt"), f"the demo's synthetic ProtoPNet (trained) at {img_size}px"
    torch.manual_seed(seed)
    grey = architecture == "xprotonet"
    model = build_model(ModelConfig(architecture=architecture, backbone=backbone, class_names=SHAPES[:3],
                                    prototypes_per_class=2, img_size=(img_size, img_size), in_channels=1 if grey else 3,
                                    mean=(0.5,) * (1 if grey else 3), std=(0.25,) * (1 if grey else 3)))
    return model, (f"{architecture}/{backbone} with random weights at {img_size}px (timing only: agreement is "
                   "meaningless)")


def run_bench(architecture: str = "protopnet", backbone: str = "tiny", img_size: int = 64, device: str = "auto",
              images: int = 2, ref_steps: int = 100, mdm: MDMConfig | None = None, seed: int = 0,
              progress: bool = True, ckpt: str | None = None) -> tuple[list[BenchRow], str]:
    """Time MDM three ways on ``images`` synthetic images, each image's top prototype, one image at a time:

    - the paper's schedule as published (each of the 27 masks alone, 2000 Adam steps): ``ref_steps`` steps of every
      mask are timed and projected to 2000;
    - the same schedule with all masks in one batch (identical result): run in full, it is the reference that
      agreement is measured against;
    - ours (``mdm``, default: the adaptive, extrapolated schedule).

    Agreement: Dice of the p90 masks and Pearson r of the heatmaps, ours against the full schedule. Returns the rows
    and a description of the model.
    """
    dev = resolve_device(device)
    cfg = mdm or MDMConfig()
    model, what = bench_model(architecture, backbone, img_size, ckpt, seed, progress)
    model = model.to(dev).eval()
    classes = model.class_names if set(model.class_names) <= set(SHAPES) else SHAPES[:3]
    size = model.config.img_size[0]
    data = SyntheticLesions(classes, n=images, size=size, channels=model.config.in_channels,
                            multilabel=model.config.architecture == "xprotonet", seed=seed + 1)
    x = model_input(torch.stack([data[i][0] for i in range(images)]), model.config).to(dev)
    with torch.no_grad():
        sels = [PrototypeSelector(model, choose_prototype(model, x[i:i + 1], None, None)) for i in range(images)]

    def timed(fn) -> tuple[list, float, float]:
        """Results of ``fn(i)`` per image, seconds per image, peak memory (MB)."""
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        out = [fn(i) for i in range(images)]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out, (time.perf_counter() - t0) / images, _peak_mb(dev)

    full_cfg = dataclasses.replace(cfg, extrapolate_after=None, tol=None)
    short = MDMLocalizer(dataclasses.replace(full_cfg, steps=ref_steps), progress=progress)
    _, t_seq, mem_seq = timed(lambda i: short.localize_sequential(x[i], sels[i]))
    full = MDMLocalizer(full_cfg, progress=progress)
    ref, t_full, mem_full = timed(lambda i: full.localize(x[i], sels[i]))
    ours_loc = MDMLocalizer(cfg, progress=progress)
    ours, t_ours, mem_ours = timed(lambda i: ours_loc.localize(x[i], sels[i]))
    agree = [float(dice(r.binary(90), o.binary(90))) for r, o in zip(ref, ours)]
    corr = [float(np.corrcoef(r.heatmap.ravel(), o.heatmap.ravel())[0, 1]) if r.heatmap.std() > 0 and
            o.heatmap.std() > 0 else float("nan") for r, o in zip(ref, ours)]
    return [BenchRow("paper (sequential)", t_seq / ref_steps * cfg.steps, mem_seq, cfg.steps, note=f"projected "
                     f"from {ref_steps} steps"),
            BenchRow("paper schedule, batched", t_full, mem_full, cfg.steps),
            BenchRow("ours", t_ours, mem_ours, float(np.mean([o.steps for o in ours])), float(np.mean(agree)),
                     float(np.mean(corr)), note=f"min Dice {min(agree):.3f}")], f"{what}, on {dev}"


def format_table(rows: list[BenchRow], note: str) -> str:
    ref = rows[0].seconds_per_image
    lines = [note, f"{'schedule':<26} {'s/image':>9} {'speed-up':>9} {'peak MB':>8} {'steps':>6} {'Dice p90':>9} "
                   f"{'Pearson r':>9}  note"]
    for r in rows:
        lines.append(f"{r.schedule:<26} {r.seconds_per_image:>9.2f} {ref / r.seconds_per_image:>8.1f}x "
                     f"{r.peak_memory_mb:>8.0f} {r.steps:>6.0f} {r.dice_p90:>9.3f} {r.pearson_r:>9.3f}  {r.note}")
    return "\n".join(lines)
