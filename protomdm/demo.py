"""``protomdm demo``: train the small synthetic ProtoPNet (once), then compare MDM with the upsampling search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import MDMConfig, TrainConfig, from_dict
from .data.synthetic import SyntheticLesions
from .evaluation.metrics import dice, iou
from .explain import MDMLocalizer, PrototypeSelector, UpsampleLocalizer
from .models import load_model
from .pipeline import choose_prototype
from .report.figures import save_panels, write_csv
from .training import train
from .data.images import model_input

# The built-in demo model; configs/synthetic_protopnet.yaml holds the same settings (a test keeps them equal).
DEMO_CONFIG = {
    "model": {"architecture": "protopnet", "backbone": "tiny", "class_names": ["disk", "square", "cross"],
              "prototypes_per_class": 2, "prototype_dim": 32, "add_on": "bottleneck", "activation": "log",
              "img_size": [64, 64], "in_channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "data": {"dataset": "synthetic", "num_train": 600, "num_test": 300, "seed": 0, "multilabel": False,
             "batch_size": 32},
    "optim": {"features_lr": 0.003, "add_on_lr": 0.003, "prototype_lr": 0.003, "last_layer_lr": 0.001,
              "warm_lr": 0.003, "weight_decay": 0.001, "lr_step_size": 10, "lr_gamma": 0.5, "warm_epochs": 2,
              "joint_epochs": 12, "push_epochs": [], "last_layer_epochs": 3},
    "loss": {"crs_ent": 1.0, "clst": 0.8, "sep": -0.08, "l1": 0.0001},
    "seed": 0, "device": "cpu",
}


def demo_config() -> TrainConfig:
    return from_dict(TrainConfig, DEMO_CONFIG, where="demo config")


def run_demo(out_dir: str | Path = "protomdm-demo", n_images: int = 4, mdm: MDMConfig | None = None,
             percentile: float = 90.0, progress: bool = True) -> dict:
    """Train (or reuse) the demo model in ``out_dir/model``, localize ``n_images`` test images' prototypes with MDM
    and upsampling, and write ``report.png`` and ``report.csv``. Returns the mean scores and the file paths."""
    out = Path(out_dir)
    cfg = demo_config()
    model_dir = out / "model"
    if not (model_dir / "best.pt").exists():
        if progress:
            print(f"training the demo ProtoPNet on synthetic data into {model_dir} (a few minutes on 2 CPU cores)")
        resume = model_dir / "last.pt" if (model_dir / "last.pt").exists() else None
        train(cfg, model_dir, resume=resume, progress=progress)
    model = load_model(model_dir / "best.pt")
    test = SyntheticLesions(cfg.model.class_names, n=n_images, size=cfg.model.img_size[0], seed=cfg.data.seed + 1)
    samples = [test.sample(i) for i in range(n_images)]
    x = model_input(torch.stack([torch.from_numpy(s.image) for s in samples]), model.config)
    protos = [choose_prototype(model, x[i:i + 1], None, model.class_names[int(s.labels.argmax())])
              for i, s in enumerate(samples)]
    mdm_loc = MDMLocalizer(mdm or MDMConfig(), progress=progress)
    rows, panels = [], []
    for i, (s, j) in enumerate(zip(samples, protos)):
        truth = s.masks[int(s.labels.argmax())]
        sel = PrototypeSelector(model, j)
        locs = {"upsample": UpsampleLocalizer().localize(x[i], sel), "mdm": mdm_loc.localize(x[i], sel)}
        panel = [(f"image {i} ({model.class_names[int(s.labels.argmax())]})", s.image.transpose(1, 2, 0), None),
                 ("ground truth", truth.astype(np.float32), "gray")]
        for name, loc in locs.items():
            b = loc.binary(percentile)
            rows.append({"image": i, "prototype": j, "method": name, "percentile": percentile,
                         "dice": round(float(dice(b, truth)), 4), "iou": round(float(iou(b, truth)), 4),
                         "seconds": round(loc.seconds, 2)})
            panel.append((f"{name}: Dice {rows[-1]['dice']:.2f}", loc.heatmap, "jet"))
        panels.append(panel)
    out.mkdir(parents=True, exist_ok=True)
    figure = save_panels(out / "report.png", panels, f"Prototype localisation, top {100 - percentile:g}% vs ground truth")
    table = write_csv(out / "report.csv", list(rows[0]), rows)
    means = {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m])) for k in ("dice", "iou", "seconds")}
             for m in ("upsample", "mdm")}
    return {"means": means, "figure": figure, "table": table, "model": model_dir / "best.pt"}
