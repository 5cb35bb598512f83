"""``protomdm demo``: train the small synthetic ProtoPNet (once), compare MDM with the upsampling search, and show
the model's reasoning: the prototype gallery and a case report of one test image."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import from_dict
from ..data.images import model_input
from ..data.loaded import LoadedImage
from ..data.sources import dataset_source
from ..data.synthetic import SyntheticLesions
from ..device import resolve_device
from ..errors import UserError
from ..evaluation.metrics import box_mask, dice, iou, pointing_game
from ..explain import MDMLocalizer, PrototypeSelector, UpsampleLocalizer
from ..explain.case import explain_case
from ..explain.localization import model_device
from ..explain.mdm import MDMConfig
from ..explain.selectors import choose_prototype
from ..files import check_writable, write_csv
from ..models import build_model, load_model_and_extra
from ..report.case import report_names, write_case_report
from ..report.figures import save_panels
from ..report.gallery import make_gallery, push_records
from ..training import train
from ..training.config import TrainConfig

CASE_STEM = "synthetic-test-0"

# The built-in demo model; configs/synthetic_protopnet.yaml holds the same settings (a test keeps them equal).
DEMO_CONFIG = {
    "model": {"architecture": "protopnet", "backbone": "tiny", "class_names": ["disk", "square", "cross"],
              "prototypes_per_class": 2, "prototype_dim": 32, "add_on": "bottleneck", "activation": "log",
              "img_size": [64, 64], "in_channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "data": {"dataset": "synthetic", "num_train": 600, "num_test": 300, "seed": 0, "multilabel": False,
             "batch_size": 32},
    "optim": {"features_lr": 0.003, "add_on_lr": 0.003, "prototype_lr": 0.003, "last_layer_lr": 0.001,
              "warm_lr": 0.003, "weight_decay": 0.001, "lr_step_size": 10, "lr_gamma": 0.5, "warm_epochs": 2,
              "joint_epochs": 12, "push_epochs": [9, 13], "last_layer_epochs": 3},
    "loss": {"crs_ent": 1.0, "clst": 0.8, "sep": -0.08, "l1": 0.0001},
    "seed": 0, "device": "auto",
}


def demo_config() -> TrainConfig:
    return from_dict(TrainConfig, DEMO_CONFIG, where="demo config")


def estimate_training_seconds(cfg: TrainConfig) -> float:
    """Seconds that training ``cfg`` should take here: one measured training step of a fresh model, times the
    steps of every epoch, times 2.5 for the losses, data, testing and the push (measured on the demo: 24 s for
    an estimate of 10 s from the bare steps)."""
    dev = resolve_device(cfg.device)
    model = build_model(cfg.model).to(dev).train()
    x = torch.rand(cfg.data.batch_size, cfg.model.in_channels, *cfg.model.img_size, device=dev)
    model(x).sum().backward()  # warm-up
    t0 = time.perf_counter()
    model(x).sum().backward()
    step = time.perf_counter() - t0
    o = cfg.optim
    epochs = o.warm_epochs + o.joint_epochs + o.last_layer_epochs * max(1, len(o.push_epochs))
    return 2.5 * step * epochs * -(-cfg.data.num_train // cfg.data.batch_size)


def step_seconds(mdm: MDMConfig, x: torch.Tensor, selector: PrototypeSelector, pairs: list[tuple[int, int]],
                 steps: int = 3) -> float:
    """Seconds of one MDM step of these tasks here: the passes of ``steps`` steps of a search that comes after a
    one-step search (which checks the folding and warms the kernels up, and on this CPU doubled the first estimate
    of the demo's searches), so the estimate is a step of the search it stands for."""
    probe = lambda n: MDMLocalizer(dataclasses.replace(mdm, extrapolate_after=n, tol=None)).fit_masks(  # noqa: E731
        x, selector, pairs)
    probe(1)
    return probe(steps).model_seconds / steps


def demo_measures(model, cfg: TrainConfig, records: list[dict] | None, heatmaps: list[np.ndarray],
                  truths: list[np.ndarray], batch: int = 100) -> dict[str, float]:
    """The three measures that say whether the demo shows the method working: the model's accuracy on the whole
    synthetic test set, the share of prototypes whose pushed patch (its activation box in the training image)
    overlaps an object of the prototype's own class there (NaN without push records), and MDM's pointing game on
    the explained test images (``heatmaps`` against ``truths``)."""
    train_set, test_set, _ = dataset_source(cfg.data).training(model.config)
    dev = model_device(model)
    right = 0
    with torch.no_grad():
        for start in range(0, len(test_set), batch):
            items = [test_set[i] for i in range(start, min(start + batch, len(test_set)))]
            x = model_input(torch.stack([px for px, _, _ in items]).to(dev), model.config)
            right += int((model(x).argmax(1).cpu() == torch.tensor([y for _, y, _ in items])).sum())
    on_object = [bool((box_mask(tuple(r["activation_box"]), tuple(cfg.model.img_size))
                       & train_set.sample(int(r["image"])).masks[int(r["class_index"])]).any())
                 for r in records or []]
    return {"test_accuracy": right / len(test_set),
            "prototypes_on_own_object": float(np.mean(on_object)) if on_object else float("nan"),
            "mdm_pointing_game": float(np.mean([pointing_game(h, t) for h, t in zip(heatmaps, truths)]))
            if heatmaps else float("nan")}


def run_demo(out_dir: str | Path = "protomdm-demo", n_images: int = 4, mdm: MDMConfig | None = None,
             percentile: float = 90.0, progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or reuse) the demo model in ``out_dir/model``, localize ``n_images`` test images' prototypes with MDM
    and upsampling, and write ``report.png`` and ``report.csv`` (an existing report only with ``overwrite``), the
    prototype gallery (``gallery/``) and the case report of the first test image (``case/``).
    Returns the mean scores, :func:`demo_measures` and the file paths."""
    out = Path(out_dir)
    if n_images < 1:
        raise UserError(f"`images` must be at least 1, got {n_images}")
    check_writable(out, ["report.png", "report.csv"], overwrite)
    check_writable(out / "case", report_names(CASE_STEM).values(), overwrite)
    check_writable(out / "gallery", ["gallery.html", "index.csv"], overwrite)
    cfg = demo_config()
    model_dir = out / "model"
    say = print if progress else (lambda *a, **k: None)
    if not (model_dir / "best.pt").exists():
        say(f"training the demo ProtoPNet on synthetic data into {model_dir}: about "
            f"{estimate_training_seconds(cfg) / 60:.1f} min here (measured from one training step)")
        resume = model_dir / "last.pt" if (model_dir / "last.pt").exists() else None
        train(cfg, model_dir, resume=resume, progress=progress)
    model, extra = load_model_and_extra(model_dir / "best.pt", resolve_device(cfg.device))
    dev = model_device(model)
    test = SyntheticLesions(cfg.model.class_names, n=n_images, size=cfg.model.img_size[0], seed=cfg.data.seed + 1)
    samples = [test.sample(i) for i in range(n_images)]
    x = model_input(torch.stack([torch.from_numpy(s.image) for s in samples]).to(dev), model.config)
    classes = [int(s.labels.argmax()) for s in samples]
    protos = [choose_prototype(model, x[i:i + 1], None, model.class_names[c]) for i, c in enumerate(classes)]
    mdm = mdm or MDMConfig()
    sel = PrototypeSelector(model, sorted(set(protos)))
    pairs = [(i, sel.indices.index(j)) for i, j in enumerate(protos)]
    per_search = 4 if dev.type == "cuda" else 2  # images per search; on the CPU, 4 ran 1.24x faster than 1
    step = step_seconds(mdm, x[:per_search], sel, [p for p in pairs if p[0] < per_search])
    most = step * mdm.steps_taken * n_images / per_search
    say(f"localizing {n_images} test images with MDM: about {most:.0f} s in all ({step:.3f} s per step, "
        f"{per_search} image(s) per search, {mdm.steps_taken} steps)")
    mdm_locs = []
    with tqdm(total=n_images, desc="MDM", unit="image", disable=not progress) as bar:  # an image counter
        for start in range(0, n_images, per_search):
            chunk = [(i - start, k) for i, k in pairs[start:start + per_search]]
            mdm_locs += MDMLocalizer(mdm).localize_pairs(x[start:start + per_search], sel, chunk)
            bar.update(len(chunk))
    rows, panels = [], []
    for i, (s, j, mdm_loc) in enumerate(zip(samples, protos, mdm_locs)):
        truth = s.masks[classes[i]]
        locs = {"upsample": UpsampleLocalizer().localize(x[i], PrototypeSelector(model, j)), "mdm": mdm_loc}
        panel = [(f"image {i} ({model.class_names[classes[i]]})", s.image.transpose(1, 2, 0), None),
                 ("ground truth", truth.astype(np.float32), "gray")]
        for name, loc in locs.items():
            b = loc.binary(percentile)
            rows.append({"image": i, "prototype": j, "method": name, "percentile": percentile, "status": loc.status,
                         "dice": round(float(dice(b, truth)), 4), "iou": round(float(iou(b, truth)), 4),
                         "seconds": round(loc.seconds, 2)})
            panel.append((f"{name}: Dice {rows[-1]['dice']:.2f}", loc.heatmap, "jet"))
        panels.append(panel)
    out.mkdir(parents=True, exist_ok=True)
    figure = save_panels(out / "report.png", panels, f"Prototype localization, top {100 - percentile:g}% vs ground truth")
    table = write_csv(out / "report.csv", list(rows[0]), rows)
    means = {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m])) for k in ("dice", "iou", "seconds")}
             for m in ("upsample", "mdm")}
    measures = demo_measures(model, cfg, push_records(extra), [loc.heatmap for loc in mdm_locs],
                             [s.masks[c] for s, c in zip(samples, classes)])
    per_task = step / per_search * mdm.steps_taken  # seconds per (image, prototype) task, as measured above
    say(f"the prototype gallery: each prototype's source image, with the network's region and MDM's: about "
        f"{per_task * model.num_prototypes:.0f} s")
    gallery = make_gallery(model_dir / "best.pt", out / "gallery", mdm=mdm, overwrite=True, progress=progress)
    say(f"a case report of test image 0: which prototypes drove its prediction, and where: about {per_task * 3:.0f} s")
    case = explain_case(model, x[:1], top_k=3, provenance=push_records(extra), config=mdm)
    image = LoadedImage(samples[0].image.transpose(1, 2, 0), Path(f"{CASE_STEM}.png"))
    case_files = write_case_report(case, image, out / "case", CASE_STEM, "Case report: synthetic test image 0")
    return {"means": means, "measures": measures, "figure": figure, "table": table, "model": model_dir / "best.pt",
            "gallery": gallery.files["html"], "case_report": case_files["html"]}
