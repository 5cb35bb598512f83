"""The training run: warm-up, joint, push and last-layer stages, with logs, checkpoints and exact resume."""

from __future__ import annotations

import dataclasses
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import from_dict, to_dict
from ..data.images import model_input
from ..data.sources import dataset_source
from ..distributed import DistEnv, init_distributed
from ..errors import UserError
from ..evaluation.metrics import auroc
from ..files import check_writable, write_csv
from ..models import PrototypeModel, architecture_class, create_model, read_checkpoint, save_checkpoint
from ..runfolder import run_lock
from .config import TrainConfig
from .push import add_provenance, push_prototypes

LOG_NAME, LAST_NAME, BEST_NAME = "log.csv", "last.pt", "best.pt"
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, bool]:
    """``(train, test, multilabel)`` datasets yielding ``(image (C, H, W) in [0, 1], target, mask)``, from the
    dataset source ``cfg.data`` names (see :mod:`protomdm.data.sources`)."""
    return dataset_source(cfg.data).training(cfg.model)


def _set_trainable(model: PrototypeModel, groups: dict[str, list], which: set[str]) -> None:
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name in which)


class _LossStep(nn.Module):
    """``forward(x, y, ...) -> model.training_loss(x, y, ...)``: the training step as a module, so that
    DistributedDataParallel sees the forward pass and averages the gradients."""

    def __init__(self, model: PrototypeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.training_loss(*args)


@dataclass
class TrainResult:
    out_dir: Path
    best_metric: float
    last_metric: float
    metric_name: str
    log: list[dict[str, Any]]


class Trainer:
    """Runs a :class:`TrainConfig`; see :func:`train`."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: torch.device, progress: bool = True,
                 dist: DistEnv = DistEnv()) -> None:
        self.cfg, self.out, self.dist = cfg, Path(out_dir), dist
        self.device, self.progress = dist.device(device), progress and dist.is_main
        arch = architecture_class(cfg.model.architecture)  # an unknown name is said before any data is read
        if arch.multilabel_only:
            cfg.model = dataclasses.replace(cfg.model, multilabel=True)
        self.train_set, self.test_set, self.multilabel = build_datasets(cfg)
        if arch.multilabel_only and not self.multilabel:
            raise UserError(f"{cfg.model.architecture} trains on multi-label data (a 0/1 target per finding); this "
                            "data is single-label: set data.multilabel, or train a ProtoPNet")
        cfg.model = dataclasses.replace(cfg.model, multilabel=self.multilabel)  # recorded in every checkpoint
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model)
        has_bn = any(isinstance(m, BATCH_NORMS) for m in model.modules())
        if dist.active and has_bn:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif dist.is_main:
                warnings.warn("BatchNorm statistics are per process on CPUs (SyncBatchNorm needs GPUs), so this run "
                              "differs slightly from one process; a GroupNorm backbone (tiny_gn) matches exactly",
                              stacklevel=2)
        self.model = model.to(self.device)
        self._ddp: dict[frozenset, nn.Module] = {}
        self.groups = self.model.parameter_groups()
        o = cfg.optim
        self.warm_opt = torch.optim.Adam([{"params": self.groups["add_on"], "lr": o.warm_lr, "weight_decay": o.weight_decay},
                                          {"params": self.groups["prototypes"], "lr": o.warm_lr}])
        self.joint_opt = torch.optim.Adam([
            {"params": self.groups["features"], "lr": o.features_lr, "weight_decay": o.weight_decay},
            {"params": self.groups["add_on"], "lr": getattr(o, self.model.add_on_lr_field),
             "weight_decay": o.weight_decay},
            {"params": self.groups["prototypes"], "lr": o.prototype_lr}])
        self.joint_sched = torch.optim.lr_scheduler.StepLR(self.joint_opt, o.lr_step_size, o.lr_gamma)
        self.last_opt = torch.optim.Adam(self.groups["last"], lr=o.last_layer_lr)
        self.pos_weight = self._pos_weight() if self.multilabel and cfg.loss.pos_weight else None
        self.epoch, self.best, self.log, self.push_records = 0, -float("inf"), [], []
        self.best_epoch: int | None = None  # the epoch whose model best.pt holds

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch, "log": self.log,
                "push": self.push_records,
                "warm_opt": self.warm_opt.state_dict(), "joint_opt": self.joint_opt.state_dict(),
                "joint_sched": self.joint_sched.state_dict(), "last_opt": self.last_opt.state_dict(),
                "config": to_dict(self.cfg)}

    def load_state(self, path: str | Path) -> None:
        ckpt = read_checkpoint(path)
        st = ckpt.get("extra", {}).get("train_state")
        if not st:
            raise UserError(f"{path}: holds no training state to resume from (resume from a run's last.pt)")
        try:  # settings added since that run was started take their defaults
            before = to_dict(from_dict(TrainConfig, st["config"], where=str(path)))
        except UserError:
            before = None
        if before != to_dict(self.cfg):
            raise UserError(f"{path}: was trained with another config; resume with the same `config`")
        self.model.load_state_dict(ckpt["state_dict"])
        self.warm_opt.load_state_dict(st["warm_opt"])
        self.joint_opt.load_state_dict(st["joint_opt"])
        self.joint_sched.load_state_dict(st["joint_sched"])
        self.last_opt.load_state_dict(st["last_opt"])
        self.epoch, self.best, self.log, self.push_records = st["epoch"], st["best"], st["log"], st["push"]
        self.best_epoch = st.get("best_epoch")
        if self.dist.is_main:
            self._repair_outputs()

    def _repair_outputs(self) -> None:
        """Make ``log.csv`` and ``best.pt`` agree with the resumed state, or say in one line where they cannot.

        A kill after ``best.pt`` or ``log.csv`` but before ``last.pt`` leaves them one epoch ahead: the log is
        rewritten from the state, and redoing the epoch writes the same ``best.pt`` again. A ``best.pt`` older than
        the state's best (from an earlier protomdm, which wrote ``last.pt`` first, or copied in by hand) cannot be
        rebuilt from ``last.pt``: that is said, not hidden.
        """
        self._write_log()
        if self.best_epoch is None:
            return
        path = self.out / BEST_NAME
        held = None
        if path.is_file():
            try:
                held = read_checkpoint(path).get("extra", {}).get("epoch")
            except UserError:
                held = None
        if held is None or held < self.best_epoch:
            warnings.warn(f"{path} does not hold the run's best model (epoch {self.best_epoch}, "
                          f"{self.best:.4f}), but {'epoch ' + str(held) if held is not None else 'no readable model'}: "
                          "an interrupted run wrote it out of order, and it cannot be rebuilt from last.pt; train "
                          "again for the best model", stacklevel=2)

    def _pos_weight(self) -> torch.Tensor:
        """Each finding's negatives / positives in the training set (read from the labels, without the images
        when the dataset offers ``targets()``; targets left out of the loss, NaN, count as neither)."""
        targets = getattr(self.train_set, "targets", None)
        labels = targets() if targets else torch.stack([self.train_set[i][1] for i in range(len(self.train_set))])
        pos, neg = (labels == 1).sum(0).float(), (labels == 0).sum(0).float()
        return (neg / pos.clamp_min(1)).to(self.device)

    # ------------------------------------------------------------------ loops
    def _plan(self, n: int, gen: torch.Generator | None, training: bool = False) -> list[tuple[int, list[int]]]:
        """Global batches of a pass over ``n`` items (shuffled with ``gen`` if given): ``(global size, this rank's
        indices)``. Rank ``r`` takes every ``world``-th item of each global batch, so the ranks together see exactly
        one process's batches. Under torchrun a last training batch smaller than the number of ranks is dropped
        (every rank must take part in each gradient step)."""
        order = torch.randperm(n, generator=gen).tolist() if gen is not None else list(range(n))
        b, world = self.cfg.data.batch_size, self.dist.world_size
        plan = [(len(order[i:i + b]), order[i:i + b][self.dist.rank::world]) for i in range(0, n, b)]
        return [(g, mine) for g, mine in plan if len(mine) > 0 and not (training and g < world)]

    def _loader(self, dataset: Dataset, plan: list[tuple[int, list[int]]]) -> DataLoader:
        return DataLoader(dataset, batch_sampler=[mine for _, mine in plan], num_workers=self.cfg.data.num_workers)

    def _step_module(self, trainable: set[str]) -> nn.Module:
        """The loss as a module; wrapped in DistributedDataParallel under torchrun (one per set of trainable
        groups, since DDP fixes the parameters it synchronises when it is built)."""
        key = frozenset(trainable)
        if key not in self._ddp:
            step = _LossStep(self.model)
            if self.dist.active:
                step = nn.parallel.DistributedDataParallel(
                    step, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self._ddp[key] = step
        return self._ddp[key]

    def _run_epoch(self, opt: torch.optim.Optimizer, trainable: set[str], stage: str, gen: torch.Generator,
                   use_l1: bool = True) -> dict[str, float]:
        model, cfg, dist = self.model, self.cfg, self.dist
        _set_trainable(model, self.groups, trainable)
        step = self._step_module(trainable)
        model.train()
        if trainable == {"last"}:  # after a push: the features keep their normalisation statistics too, so that
            for m in model.modules():  # every prototype stays on the training patch it was pushed to
                if isinstance(m, BATCH_NORMS):
                    m.eval()
        sums: dict[str, float] = {}
        n = 0
        plan = self._plan(len(self.train_set), gen, training=True)
        bar = tqdm(zip(plan, self._loader(self.train_set, plan)), total=len(plan), leave=False, unit="batch",
                   desc=f"epoch {self.epoch + 1} {stage}", disable=not self.progress)
        for (global_n, _), (pixels, y, _) in bar:
            pixels, y = pixels.to(self.device), y.to(self.device)
            mine = slice(dist.rank, global_n, dist.world_size)  # this rank's positions in the global batch
            if cfg.data.flip:  # drawn for the whole global batch, so every rank draws the same numbers
                flip = (torch.rand(global_n, generator=gen) < 0.5)[mine]
                pixels = torch.where(flip.to(self.device)[:, None, None, None], pixels.flip(-1), pixels)
            x = model_input(pixels, cfg.model)
            aug = model.draw_augmentation(global_n, gen, self.device)  # for the global batch, as the flips
            loss, parts, logits = step(x, y.float() if self.multilabel else y, cfg.loss, use_l1, self.pos_weight,
                                       None if aug is None else aug[mine])
            if not self.multilabel:
                parts["acc"] = float((logits.argmax(1) == y).float().mean())
            opt.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: weigh each rank's batch mean by its share of the global batch
            (loss * (len(y) * dist.world_size / global_n)).backward()
            opt.step()
            parts["loss"] = float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * pixels.shape[0]
            n += pixels.shape[0]
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
        keys = sorted(sums)
        total = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [n], dtype=torch.float64))
        return {f"train_{k}": float(v) / max(float(total[-1]), 1) for k, v in zip(keys, total[:-1])}

    @torch.no_grad()
    def evaluate(self) -> tuple[str, float]:
        """Test accuracy (ProtoPNet) or mean per-class AUROC (XProtoNet); under torchrun each rank scores a shard."""
        self.model.eval()
        outs, ys = [], []
        for pixels, y, _ in self._loader(self.test_set, self._plan(len(self.test_set), None)):
            outs.append(self.model(model_input(pixels.to(self.device), self.cfg.model)).cpu())
            ys.append(y)
        parts = self.dist.all_gather((torch.cat(outs) if outs else None, torch.cat(ys) if ys else None))
        logits = torch.cat([o for o, _ in parts if o is not None])
        y = torch.cat([t for _, t in parts if t is not None])
        if self.multilabel:
            return "test_mean_auroc", float(np.nanmean(auroc(logits.numpy(), y.numpy())))
        return "test_accuracy", float((logits.argmax(1) == y).float().mean())

    def _push(self) -> None:
        plan = self._plan(len(self.train_set), None)
        batches = ((model_input(p.to(self.device), self.cfg.model), y, torch.tensor(idx))
                   for (_, idx), (p, y, _) in zip(plan, self._loader(self.train_set, plan)))
        get = lambda i: model_input(self.train_set[i][0][None].to(self.device), self.cfg.model)  # noqa: E731
        records = push_prototypes(self.model, batches, get, multilabel=self.multilabel, dist=self.dist)
        self.push_records = add_provenance(records, self.train_set, self.cfg.data.dataset, self.cfg.thumbnails)

    def run(self, stop_after: int | None = None) -> TrainResult:
        cfg, o = self.cfg, self.cfg.optim
        total = o.warm_epochs + o.joint_epochs
        push_at = set(o.push_epochs) or {total - 1}
        metric_name = "test_mean_auroc" if self.multilabel else "test_accuracy"
        done_now = 0
        while self.epoch < total and (stop_after is None or done_now < stop_after):
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch)
            if self.epoch < o.warm_epochs:
                stage = "warm"
                row = self._run_epoch(self.warm_opt, {"add_on", "prototypes"}, stage, gen)
            else:
                stage = "joint"
                row = self._run_epoch(self.joint_opt, {"features", "add_on", "prototypes"}, stage, gen)
                self.joint_sched.step()
            pushed = self.epoch in push_at
            if pushed:
                self._push()
                metric_name, value = self.evaluate()
                if self.dist.is_main:
                    save_checkpoint(self.model, self.out / f"push_epoch{self.epoch + 1}.pt",
                                    {"push": self.push_records, metric_name: value})
                for _ in range(o.last_layer_epochs):
                    row.update({f"last_{k}": v for k, v in self._run_epoch(
                        self.last_opt, {"last"}, "last-layer", gen).items()})
                stage += "+push+last"
            metric_name, value = self.evaluate()
            self.epoch += 1
            done_now += 1
            self.log.append({"epoch": self.epoch, "stage": stage, **{k: round(v, 5) for k, v in row.items()},
                             metric_name: round(value, 5), "seconds": round(time.perf_counter() - t0, 2)})
            # best.pt is chosen among the pushed models only: between pushes the prototypes are latent vectors of
            # no training image, so "this looks like that" (and the recorded sources) would not hold
            improved = pushed and value > self.best
            self.best = max(self.best, value) if pushed else self.best
            if improved:
                self.best_epoch = self.epoch
            if self.dist.is_main:  # one writer; the others wait so that a resume sees complete files
                # last.pt is the commit point: it is written after best.pt and log.csv, so a kill before it is
                # resumed from the previous last.pt, which redoes this epoch and writes the same best.pt and log
                if improved:
                    save_checkpoint(self.model, self.out / BEST_NAME, {"push": self.push_records,
                                                                       metric_name: value, "epoch": self.epoch})
                self._write_log()
                extra = {"train_state": self.state(), "push": self.push_records, metric_name: value}
                save_checkpoint(self.model, self.out / LAST_NAME, extra)
            self.dist.barrier()
            if self.progress:
                tqdm.write(f"epoch {self.epoch}/{total} {stage}: loss {row['train_loss']:.4f}, "
                           f"{metric_name} {value:.4f}")
        last = self.log[-1][metric_name] if self.log else float("nan")
        return TrainResult(self.out, self.best, last, metric_name, self.log)

    def _write_log(self) -> None:
        keys: list[str] = []
        for r in self.log:
            keys += [k for k in r if k not in keys]
        write_csv(self.out / LOG_NAME, keys, self.log)


def train(cfg: TrainConfig, out_dir: str | Path, resume: str | Path | None = None, device: str | None = None,
          stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """Train the model of ``cfg``; write ``last.pt``, ``best.pt``, ``push_epochN.pt`` and ``log.csv`` to ``out_dir``.

    Deterministic on the CPU for a given ``cfg.seed``; ``resume`` (a run's ``last.pt``) continues it to the same
    result as an uninterrupted run. ``stop_after`` ends after that many epochs (to split long runs). Under
    ``torchrun`` it trains with DistributedDataParallel, rank 0 writing the files; see :mod:`protomdm.distributed`.
    """
    from ..device import resolve_device

    out = Path(out_dir)
    if stop_after is not None and stop_after < 1:
        raise UserError(f"stop after at least 1 epoch, got {stop_after}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another output folder")
    dev = resolve_device(device or cfg.device)
    if resume is None and (out / LAST_NAME).exists():
        raise UserError(f"{out} already holds a training run; pass `resume` {out / LAST_NAME} or another `out`")
    dist = init_distributed(dev)
    trainer = Trainer(cfg, out, dev, progress, dist)
    if dist.is_main:
        check_writable(out)
    with run_lock(out) if dist.is_main else nullcontext():
        if resume is not None:
            trainer.load_state(resume)
        return trainer.run(stop_after)
