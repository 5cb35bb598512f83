"""Multiple Dynamic Mask (MDM) localization (Peng et al.).

For each of N mask sizes ``a_i`` a mask vector ``d_i`` of ``a_i x a_i`` cells starts at 0.5, is upsampled to the
input (``M_i`` in [0, 1]) and trained with Adam, the network frozen, to keep the explained activation ``f_t`` while
masking as much as possible. The default loss is

    ||f_t(X) - f_t(M_i * X + (1 - M_i) * B)||^2 / ||f_t(X) - f_t(B)||^2 + lambda_l1 * mean|d_i|

(``B`` the masking baseline: zeros as in the paper, a blurred or a mean image): the reconstruction term is divided by
the effect of masking everything, so it reads "the share of the activation's change that the mask lets through" and
one ``lambda_l1`` serves every model and activation scale. ``loss: paper`` is the paper's Algorithm 1 as written,
``lambda1 * ||f_t(X) - f_t(M_i X)||^2 + lambda2 * mean|d_i|`` (see :class:`~protomdm.explain.mdm.MDMConfig`). An
activation that masking the whole image does not change does not depend on the image: its localization is refused
with the ``empty`` status rather than trained to nothing. The heatmap is ``sum_i M_i``, set to zero where that sum is
below ``gamma``, and normalised to [0, 1].

The engine: the masks are independent, so all of them (and those of several images and targets) train together, one
batch of masked images per pass. The N masks of a task are packed into one ``(N, A, A)`` tensor (``A`` the largest
size, unused cells zero) and upsampled by two matrix products, ``M_i = U_i d_i V_i^T`` (bilinear interpolation is
separable and linear), so one pass is one upsampling and one forward and backward pass of the model for every mask at
once. After each pass the schedule's Adam steps up to the next one are taken, the reconstruction term's gradient
between passes from the activation linearised at the pass (:meth:`MDMLocalizer._linear_steps`): a pass costs as
much as a hundred of those steps or more, so the paper's 2000 steps take 300 passes and the steps between them.
:meth:`MDMLocalizer.localize_sequential` is the paper's one-mask-at-a-time schedule with ``torch.optim.Adam`` and
``F.interpolate``, kept as the reference that the batched engine must reproduce.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import BASELINES, check_finite, require
from ..device import synchronize
from ..errors import UserError
from ..models.frozen import batchnorm_folded, folding_error, frozen
from ..runtime import keep_freed_memory
from .localization import Localization, Localizer, Maps, Pair, eval_mode, model_device
from .perturbation import Perturbation, independence_reason, masking_effect
from .registry import method_settings, register_localizer
from .selectors import Selector

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
log = logging.getLogger(__name__)
FOLD_TOLERANCE = 1e-4  # the largest change of a folded convolution's output, relative to its largest value
CPU_IMAGES = 4  # images per search on the CPU (measured: 1.24x faster than one at a time)
GPU_IMAGES = 8  # ... on a GPU whose memory a search's pass cannot be measured on
GPU_SHARE = 0.5  # of a GPU's free memory, the most that a search's passes are planned to take
MAX_IMAGES_PER_SEARCH = 64
PROBE_IMAGES = 4  # masked images a GPU's pass is measured on
AUTO_GAIN = 1.15  # precision auto: a lower precision is kept only when its passes are this much faster
LOSSES = ("normalised", "paper")
BETWEEN_PASSES = ("linear", "scaled")


@dataclass
class MDMConfig:
    """Settings of the Multiple Dynamic Mask search (Peng et al.).

    Masks and optimiser are the paper's: 27 masks of 6..32 cells, init 0.5, Adam (lr 3e-3) over a ``steps``-step
    schedule (2000), gamma 5. The loss (``loss``):

    - ``normalised`` (default): ``||f(X) - f(MX)||^2 / ||f(X) - f(B)||^2 + lambda_l1 * mean|d|``. The reconstruction
      term is the share of the masking effect that the mask lets through, so one ``lambda_l1`` serves every model and
      activation scale. ``lambda_l1`` 3 was best on held-out images of three trained models (scripts/mdm_study.py:
      p90 Dice, Dice at the object's area and the pointing game); 0.003, the earlier default, kept a third of the
      image.
    - ``paper``: Algorithm 1 as written, ``lambda1 * ||f(X) - f(MX)||^2 + lambda2 * mean|d|`` (CUB: lambda1 1e-2, NIH
      1e-3; lambda2 1). For one image it is the normalised loss with ``lambda_l1 = lambda2 / (lambda1 * E)``, ``E``
      that image's ``||f(X) - f(B)||^2``: the weight of the area depends on how much masking moves the activation.

    The schedule is run in fewer passes of the model: each mask takes at most ``adam_steps`` (300) passes, each
    followed by ``steps / adam_steps`` of the schedule's Adam steps (``time_scale``). With ``between_passes:
    linear`` (default) those are the paper's own Adam steps, the reconstruction term's gradient at each taken from the
    activation linearised at the last pass (:meth:`MDMLocalizer._linear_steps`; exact for an activation linear in
    the image); with ``scaled``, the engine before, one Adam step per pass stands for all of them (the learning rate
    times that, the moment decay rates raised to that power). On the schedule study (scripts/schedule_study.py: a
    trained ProtoPNet, XProtoNet and plain CNN, two held-out sets at 64 px, and at 224 px, on objects of 0.3% of the
    image; XProtoNet also trained at 224 px) 300 linear passes agree with the full schedule at p90 Dice >= 0.96 mean
    and >= 0.91 minimum on every row but one, where 400 scaled steps reached 0.80 and 0.84 on ProtoPNet activations
    (worse optima); the one is the 64-px XProtoNet run at 224 px, which misses the objects there and whose full
    schedule started at 0.501 agrees with itself at 0.50 (README, "Faster, same result"). ``protomdm bench
    --input`` checks a model on one's own images, and every search reports its final loss (:class:`MaskFit`).
    Optionally (``tol``) every ``patience`` passes (from ``min_steps`` on) each task's masks are projected to the
    schedule's end by continuing every element's last Adam update, and once that projection's
    top-``stop_percentile`` mask has changed by at most ``tol`` (1 - Dice) over two checks in a row the task stops
    with its projection as result; ``extrapolate_after`` caps the passes the same way.
    ``time_scale: 1`` with ``tol: null`` and ``extrapolate_after: null`` is the paper's schedule, the model run at
    every step (``--full-schedule``).

    ``precision`` is that of the passes (autocast; the prototype layers stay float32): ``auto`` times the first
    step's passes in fp32 and bf16 and keeps bf16 where it is ``AUTO_GAIN`` (1.15) times faster. fp32 by default,
    so that a map is the same on every machine. For the search the network's BatchNorm is folded into the convolution
    before it (``fold_batchnorm``; only where that is checked to keep the activations) and its weights and the masked
    images are laid out channels-last (``channels_last``): on the 2-core CPU both together made the bare passes
    1.29-1.61x faster for the tiny backbones and ResNet-18, while DenseNet-121 ran at 1.01x, channels-last slowing it
    (``channels_last: false`` there; ``scripts/bench_frozen.py``; :mod:`protomdm.models.frozen`).
    """

    sizes: tuple[int, ...] = tuple(range(6, 33))
    loss: str = "normalised"
    lambda_l1: float = 3.0  # chosen against ground truth (scripts/mdm_study.py; README "Choosing lambda")
    lambda1: float = 1e-3  # loss: paper only
    lambda2: float = 1.0  # loss: paper only
    gamma: float = 5.0
    lr: float = 3e-3
    steps: int = 2000
    init: float = 0.5
    baseline: str = "zero"  # what masked-out pixels become: zero | blur | mean (in the model's input space)
    blur_sigma: float = 10.0
    upsample: str = "bilinear"  # bilinear keeps an upsampled [0, 1] mask inside [0, 1]
    adam_steps: int | None = 300  # the model passes each mask takes (Adam steps for between_passes: scaled)
    time_scale: float | None = None  # schedule steps per pass; None: steps / adam_steps (1 if steps are fewer)
    between_passes: str = "linear"  # linear: every schedule step, the residual linearised between passes | scaled
    tol: float | None = None  # stop a task once its projected top mask changes by <= tol (1 - Dice) ...
    patience: int = 100  # ... between checks `patience` passes apart, twice in a row
    min_steps: int = 200  # ... and not before this many passes
    stop_percentile: float = 90.0
    batch_masks: int | None = None  # most masked images per forward pass; None: all at once
    precision: str = "fp32"  # auto: bf16 where the device's passes are measured >= 15% faster in it, else fp32
    channels_last: bool = True  # the model's weights and the masked images laid out channels-last
    fold_batchnorm: bool = True  # BatchNorm folded into the conv before it, where that keeps the activations
    extrapolate_after: int | None = None  # the most passes a task takes; the rest of the schedule is extrapolated

    def __post_init__(self) -> None:
        self.sizes = tuple(self.sizes)
        check_finite(self)
        require(len(self.sizes) >= 1 and all(a >= 1 for a in self.sizes), "sizes must be a non-empty list of positive ints")
        require(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        require(self.lambda_l1 >= 0, f"lambda_l1 must be >= 0, got {self.lambda_l1}")
        require(self.lambda1 > 0 and self.lambda2 >= 0, f"lambda1 must be > 0 and lambda2 >= 0, got {self.lambda1}, "
                f"{self.lambda2}")
        require(self.gamma >= 0, f"gamma must be >= 0, got {self.gamma}")
        require(self.gamma < len(self.sizes), f"gamma ({self.gamma}) must be below the number of masks ({len(self.sizes)})")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(0.0 <= self.init <= 1.0, f"init must lie in [0, 1], got {self.init}")
        require(self.baseline in BASELINES, f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        require(self.blur_sigma > 0, "blur_sigma must be > 0")
        require(self.upsample in ("bilinear", "nearest"), f"upsample must be bilinear or nearest, got {self.upsample!r}")
        require(self.time_scale is None or 1 <= self.time_scale <= self.steps,
                f"time_scale must lie in [1, steps] or be null, got {self.time_scale}")
        require(self.adam_steps is None or self.adam_steps >= 1, f"adam_steps must be null or >= 1, got {self.adam_steps}")
        require(self.between_passes in BETWEEN_PASSES,
                f"between_passes must be one of {BETWEEN_PASSES}, got {self.between_passes!r}")
        require(self.tol is None or self.tol > 0, f"tol must be > 0 or null, got {self.tol}")
        require(self.patience >= 1 and self.min_steps >= 0, "patience must be >= 1 and min_steps >= 0")
        require(0 < self.stop_percentile < 100, "stop_percentile must lie strictly between 0 and 100")
        require(self.batch_masks is None or self.batch_masks >= 1, "batch_masks must be >= 1 or null")
        require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        require(self.extrapolate_after is None or self.extrapolate_after >= 1,
               f"extrapolate_after must be null or >= 1, got {self.extrapolate_after}")

    @property
    def horizon(self) -> int:
        """Passes of the whole schedule: ``adam_steps`` (or ``steps``, if fewer); with ``time_scale`` given,
        ``steps / time_scale`` rounded up."""
        if self.time_scale is None:
            return self.steps if self.adam_steps is None else min(self.steps, self.adam_steps)
        return math.ceil(self.steps / self.time_scale)

    @property
    def step_scale(self) -> float:
        """Schedule steps per pass: ``time_scale``, or ``steps / horizon`` where it is not given."""
        return self.time_scale if self.time_scale is not None else self.steps / self.horizon

    @property
    def steps_taken(self) -> int:
        """The most passes a task takes: the schedule's, or fewer when the rest is extrapolated."""
        return min(self.horizon, self.extrapolate_after or self.horizon)

    def schedule_at(self, passes: int | torch.Tensor) -> int | torch.Tensor:
        """Schedule steps done after ``passes`` passes (an int, or a tensor of them): ``passes * step_scale``
        rounded, at most ``steps``."""
        if isinstance(passes, torch.Tensor):
            return (passes * self.step_scale).round().clamp(max=self.steps)
        return min(self.steps, round(passes * self.step_scale))

    def full_schedule(self) -> "MDMConfig":
        """The same settings on the paper's schedule: every one of ``steps`` steps taken, no stop, no projection."""
        return dataclasses.replace(self, time_scale=1.0, tol=None, extrapolate_after=None)


def load_mdm_config(path: str | Path) -> MDMConfig:
    """Read an :class:`MDMConfig` from YAML (keys at top level, or under ``mdm:``), as every method's settings are
    read (:func:`~protomdm.explain.registry.method_settings`)."""
    return method_settings("mdm", path)


def images_per_search(requested: int | None, device: torch.device, model: nn.Module | None = None,
                      masks: int = len(MDMConfig.sizes)) -> int:
    """How many images (one target each) share one MDM search: ``requested``; else ``CPU_IMAGES`` on the CPU; on a
    GPU as many as ``GPU_SHARE`` of its free memory holds, by one image's pass of ``masks`` masked images measured on
    ``model`` (:func:`pass_bytes`; at most ``MAX_IMAGES_PER_SEARCH``), and ``GPU_IMAGES`` where that cannot be
    measured. A search that still runs out of memory halves its passes' batch and goes on."""
    if requested is not None and requested < 1:
        raise UserError(f"at least 1 image per search, got {requested}")
    if requested or device.type != "cuda":
        return requested or CPU_IMAGES
    need = pass_bytes(model, device, masks) if model is not None else None
    if not need:
        return GPU_IMAGES
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(MAX_IMAGES_PER_SEARCH, int(GPU_SHARE * free / need)))


def pass_bytes(model: nn.Module, device: torch.device, masks: int = len(MDMConfig.sizes)) -> int | None:
    """Peak GPU memory (bytes) of one image's pass in a search: ``masks`` masked images of the model's input size
    (``model.config``) forward and backward to the input, the model frozen and laid out as a search runs it; measured
    on at most ``PROBE_IMAGES`` of them ``(n, C, H, W)`` and scaled (a small GPU's memory may not hold them all).
    None where it cannot be measured (no ``config``, not on a GPU, any error of the model's)."""
    spec = getattr(model, "config", None)
    if spec is None:
        return None
    n = min(masks, PROBE_IMAGES)
    try:
        shape = (n, spec.in_channels, *spec.img_size)
        with eval_mode(model), frozen(model, False, MDMConfig.channels_last):
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            x = torch.zeros(shape, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
            torch.autograd.grad(model(x).float().sum(), x)
            return (torch.cuda.max_memory_allocated(device) - before) * masks // n
    except Exception as e:  # noqa: BLE001 - a best guess only: the default stands
        log.info("could not measure a search pass's memory (%s: %s)", type(e).__name__, e)
        return None


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of bool masks ``(T, P)`` row by row (1 where both are empty)."""
    inter = (a & b).sum(1).float()
    total = (a.sum(1) + b.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def _loss_figures(fit: "MaskFit", t: int) -> dict:
    """Task ``t``'s final loss, mean over its masks, and its two terms (None where the target was not trained); not
    ``loss``, which names the loss's kind among the settings."""
    if fit.reconstruction is None or fit.area is None or bool(fit.independent[t]):
        return {"final_loss": None, "final_loss_reconstruction": None, "final_loss_area": None}
    rec, area = float(fit.reconstruction[t].mean()), float(fit.area[t].mean())
    return {"final_loss": float(f"{rec + area:.6g}"), "final_loss_reconstruction": float(f"{rec:.6g}"),
            "final_loss_area": float(f"{area:.6g}")}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context of a search's passes in ``precision`` (fp32: none; bf16, fp16: ``torch.autocast``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _is_oom(e: BaseException) -> bool:
    """An accelerator's out-of-memory error, or the CPU allocator's (a RuntimeError, "can't allocate memory")."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in ("out of memory", "can't allocate memory")))


def masks_to_heatmap(masks: np.ndarray | torch.Tensor, gamma: float) -> np.ndarray:
    """MDM heatmap from upsampled masks ``(N, H, W)``: their sum, zero where the sum < gamma, scaled to [0, 1]."""
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    s = m.astype(np.float64).sum(0)
    s[s < gamma] = 0.0
    peak = s.max()
    return (s / peak if peak > 0 else s).astype(np.float32)


def standardised_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """The paper's normalised map ``M^h = (M^F - mean(M^F)) / std(M^F)`` of a heatmap ``(H, W)`` (zero if flat).

    Standardising ignores the heatmap's scale, so it is the same from the sum of the masks or from the [0, 1] map
    that :func:`masks_to_heatmap` returns; the ranking of pixels, hence every top-percentile mask, is unchanged.
    """
    h = np.asarray(heatmap, np.float64)
    sd = h.std()
    return ((h - h.mean()) / sd if sd > 0 else np.zeros_like(h)).astype(np.float32)


def interpolation_matrix(n_in: int, n_out: int, mode: str = "bilinear") -> torch.Tensor:
    """``(n_out, n_in)``: the linear map of ``F.interpolate`` (``bilinear``, ``align_corners=False``, or
    ``nearest``) along one axis; 2-D interpolation is this along each axis."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]  # n_in signals of length n_in, one per cell
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(eye, size=n_out, mode="linear" if mode == "bilinear" else "nearest", **kwargs)
    return out[:, 0, :].t().float()


class MaskUpsampler:
    """The N masks of a task packed in one ``(N, A, A)`` tensor (mask ``i`` in its top-left ``a_i x a_i`` cells, the
    rest zero), upsampled to ``(N, H, W)`` by ``M_i = U_i d_i V_i^T``.

    Args:
        sizes: the mask sizes ``a_i``.
        size: ``(H, W)`` of the input.
        mode: ``bilinear`` or ``nearest``, as ``F.interpolate``.
    """

    def __init__(self, sizes: Sequence[int], size: tuple[int, int], mode: str, device: torch.device) -> None:
        a, (h, w) = max(sizes), size
        self.sizes, self.side = tuple(sizes), a
        self.rows = torch.zeros(len(sizes), h, a, device=device)  # U_i, zero-padded to A columns
        self.cols = torch.zeros(len(sizes), w, a, device=device)  # V_i
        self.valid = torch.zeros(len(sizes), a, a, dtype=torch.bool, device=device)
        for i, s in enumerate(sizes):
            self.rows[i, :, :s] = interpolation_matrix(s, h, mode).to(device)
            self.cols[i, :, :s] = interpolation_matrix(s, w, mode).to(device)
            self.valid[i, :s, :s] = True
        self.cells = torch.tensor([s * s for s in sizes], dtype=torch.float32, device=device)  # (N,)

    def init(self, tasks: int, value: float) -> torch.Tensor:
        """Packed masks ``(T, N, A, A)`` at ``value`` (zero outside each mask's cells)."""
        return torch.where(self.valid, value, 0.0).expand(tasks, -1, -1, -1).clone()

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        """``(T, N, A, A)`` -> upsampled masks ``(T, N, H, W)``, in [0, 1] for cells in [0, 1]."""
        return self.rows @ p @ self.cols.transpose(1, 2)

    def to_cells(self, grad: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient ``(n, H, W)`` of upsampled masks ``which (n,)`` (their index ``i``) back on their cells:
        ``U_i^T g V_i``, ``(n, A, A)``; ``which`` None: the N masks of every task in order, ``n = T * N``."""
        if which is None:
            return (self.rows.transpose(1, 2) @ grad.unflatten(0, (-1, len(self.sizes))) @ self.cols).flatten(0, 1)
        return self.rows[which].transpose(1, 2) @ grad @ self.cols[which]

    def unpack(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """Mask ``i``'s own cells ``(T, a_i, a_i)``."""
        s = self.sizes[i]
        return p[:, i, :s, :s]


@dataclass(frozen=True)
class MDMLoss:
    """The loss of one task: ``normalised`` (``lambda_l1``) or the ``paper``'s (``lambda1``, ``lambda2``); see
    :class:`~protomdm.explain.mdm.MDMConfig`."""

    kind: str = "normalised"
    lambda_l1: float = 0.003
    lambda1: float = 1e-3
    lambda2: float = 1.0

    @classmethod
    def of(cls, cfg: MDMConfig) -> "MDMLoss":
        return cls(cfg.loss, cfg.lambda_l1, cfg.lambda1, cfg.lambda2)

    def weights(self, effect: float) -> tuple[float, float]:
        """``(weight of ||f(X) - f(MX)||^2, weight of mean|d|)`` for a task whose full masking moves the activation by
        ``effect = ||f(X) - f(B)||^2``."""
        if self.kind == "paper":
            return self.lambda1, self.lambda2
        return 1.0 / max(effect, torch.finfo(torch.float32).tiny), self.lambda_l1


@dataclass
class MaskFit:
    """Raw result of the mask search for T tasks (image x target pairs).

    Attributes:
        masks: ``(T, N, H, W)`` upsampled masks in [0, 1].
        steps: ``(T, N)`` passes each mask took (each followed by ``step_scale`` schedule steps).
        targets: the activation on the unmasked images, one ``(...)`` tensor per task.
        seconds: wall time of the whole search.
        batch_masks: the batch size finally used (smaller than asked after an out-of-memory).
        effect: ``(T,)`` ``||f(X) - f(B)||^2``, the reconstruction term's scale.
        independent: ``(T,)`` tasks whose activation masking does not change (not trained; status ``empty``).
        model_seconds: of ``seconds``, the time spent in the model's forward and backward passes (each mask's Adam
            step is one pass of one masked image: ``steps.sum()`` passes in all); on a GPU, the host's time queuing
            them (a search does not wait for the device at each step).
        precision: the precision of the passes (``precision: auto`` resolved).
        reconstruction: ``(T, N)`` each final mask's weighted reconstruction term (fp32), as in the loss.
        area: ``(T, N)`` each final mask's weighted area term: the loss is their sum, lower is better (a search
            that stopped in a worse optimum than the full schedule's shows here, without the reference).
    """

    masks: torch.Tensor
    steps: torch.Tensor
    targets: list[torch.Tensor]
    seconds: float
    batch_masks: int
    effect: torch.Tensor
    independent: torch.Tensor
    model_seconds: float = 0.0
    precision: str = "fp32"
    reconstruction: torch.Tensor | None = None
    area: torch.Tensor | None = None


def adam_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int,
              betas: tuple[float, float], lr: float, keep: torch.Tensor | None = None) -> None:
    """``torch.optim.Adam``'s update of ``p`` (no weight decay) with gradient ``g`` at step ``t``, moments ``m``
    and ``v``, then the clamp to [0, 1], in place; where ``keep`` (a bool tensor broadcast to ``p``) is given, only
    there.

    The update is Adam's ``lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)`` (``c1``, ``c2`` the bias corrections), written
    as ``lr sqrt(c2) / c1 * m / (sqrt(max(v, tiny)) + eps sqrt(c2))``: the same but for rounding (``tiny``, 1e-38, the
    smallest normal float, moves the denominator by 1e-19 where ``eps sqrt(c2)`` is 3e-10 or more), with a square
    root that never meets a zero, for which a CPU's vectorised ``sqrt`` takes 10x the time of any other value (the
    packed masks' unused cells keep ``v`` at zero: 59% of them).
    """
    b1, b2 = betas
    c2 = math.sqrt(1 - b2**t)
    step = lr * c2 / (1 - b1**t)
    if keep is None:  # as torch.optim.Adam's single-tensor update
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.addcdiv_(m, v.clamp_min(TINY).sqrt_().add_(ADAM_EPS * c2), value=-step).clamp_(0, 1)
        return
    m.copy_(torch.where(keep, b1 * m + (1 - b1) * g, m))
    v.copy_(torch.where(keep, b2 * v + (1 - b2) * g * g, v))
    p.copy_(torch.where(keep, p - step * m / v.clamp_min(TINY).sqrt_().add_(ADAM_EPS * c2), p).clamp_(0, 1))


def _kept(active: torch.Tensor) -> torch.Tensor | None:
    """The entries ``active (T, N)`` as :func:`adam_step`'s ``keep`` on packed masks ``(T, N, A, A)``: None where
    every entry trains, for the in-place update."""
    return None if bool(active.all()) else active[..., None, None]


def _rows(x: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """``x[idx]`` of ``x (n, ...)``, or ``x`` itself where ``idx`` is every row in order (no copy)."""
    return x if len(idx) == n else x[idx]


def _scattered(x: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, ...)``, zero but rows ``idx``, which are ``x``: ``x`` itself where ``idx`` is every row in order."""
    if len(idx) == n:
        return x
    out = x.new_zeros(n, *x.shape[1:])
    out[idx] = x
    return out


def flush_subnormal(*tensors: torch.Tensor) -> None:
    """Set the subnormal entries of float32 ``tensors`` (nonzero, below 1e-38 in magnitude) to zero, in place.

    On x86 CPUs arithmetic on them is 25x slower (measured: a multiply of 27,648 of them 149 us against 6 us), and
    Adam's first moment of a cell whose gradient has gone to zero decays into them and stays there (0.9 times the
    smallest subnormal rounds back to it): 50,879 of the 56,925 cells of the demo's case report from step 1000 on.
    A value this small moves no mask.
    """
    for x in tensors:
        x.copy_(F.hardshrink(x, TINY))  # 10x faster than a masked fill


@register_localizer("mdm", settings=MDMConfig)
class MDMLocalizer(Localizer):
    """Multiple Dynamic Mask localizer.

    Args:
        config: an :class:`~protomdm.explain.mdm.MDMConfig` (defaults: the paper's masks and optimiser).
        progress: show a progress bar over the optimisation steps.
        schedule: ``"batched"`` (every mask of every pair in one search, our schedule) or ``"sequential"`` (the
            paper's: each mask alone, with ``torch.optim.Adam``, for the full ``steps``; the reference).
        **overrides: any :class:`MDMConfig` field, e.g. ``steps=500``.

    Example:
        >>> loc = MDMLocalizer(steps=300).localize(x, PrototypeSelector(model, prototype=3))
        >>> loc.heatmap.shape, loc.box(90)
    """

    def __init__(self, config: MDMConfig | None = None, progress: bool = False, schedule: str = "batched",
                 **overrides) -> None:
        if schedule not in ("batched", "sequential"):
            raise UserError(f"schedule must be batched or sequential, got {schedule!r}")
        self.config = dataclasses.replace(config or MDMConfig(), **overrides)
        self.progress, self.schedule = progress, schedule
        self._precisions: dict[tuple, str] = {}  # precision auto, decided once per model, device and batch shape
        self._folds: dict[int, bool] = {}  # fold_batchnorm, checked once per model

    method = "mdm"

    def compute_maps(self, x: torch.Tensor, selector: Selector, pairs: list[Pair]) -> Maps:
        """Every pair's masks in one search (:meth:`fit_masks`; the paper's one-mask-at-a-time schedule,
        :meth:`fit_sequential`, with ``schedule="sequential"``); heatmap = sum of the masks, zero below gamma."""
        fit = self.fit_sequential(x, selector, pairs) if self.schedule == "sequential" else \
            self.fit_masks(x, selector, pairs)
        n = len(pairs)
        figures = [{"batch_masks_used": fit.batch_masks, "schedule": self.schedule, "precision_used": fit.precision,
                    "passes": int(fit.steps[t].sum()), "mean_steps": float(fit.steps[t].float().mean()),
                    "model_seconds": round(fit.model_seconds / n, 4), **_loss_figures(fit, t)} for t in range(n)]
        reasons = [independence_reason(float(fit.effect[t]), fit.targets[t]) if bool(fit.independent[t]) else ""
                   for t in range(n)]
        return Maps(np.stack([masks_to_heatmap(fit.masks[t], self.config.gamma) for t in range(n)]),
                    scores=[float(t.float().mean()) for t in fit.targets], steps=fit.steps.max(1).values.tolist(),
                    reasons=reasons, settings=figures, normalized=True)

    def empty_hint(self) -> str:
        return f" (every pixel's mask sum stays below gamma {self.config.gamma:g}); try a smaller lambda_l1"

    def localize_sequential(self, image: torch.Tensor, selector: Selector) -> Localization:
        """The paper's schedule: each mask trained alone with ``torch.optim.Adam`` for the full ``steps`` (the
        reference for tests and ``protomdm bench``); see :meth:`fit_sequential`."""
        return MDMLocalizer(self.config, self.progress, schedule="sequential").localize(image, selector)

    def fit_sequential(self, x: torch.Tensor, selector: Selector, pairs: list[Pair]) -> MaskFit:
        """The paper's schedule for each pair: each mask trained alone with ``torch.optim.Adam`` for the full
        ``steps``, ignoring the schedule's shortcuts (``adam_steps``, ``tol``, ``extrapolate_after``),
        ``batch_masks`` and ``precision``."""
        cfg = self.config
        h, w = x.shape[-2:]
        t0 = time.perf_counter()
        pert = Perturbation(cfg.baseline, cfg.blur_sigma)
        kwargs = {"align_corners": False} if cfg.upsample == "bilinear" else {}
        up = lambda d: F.interpolate(d, size=(h, w), mode=cfg.upsample, **kwargs).clamp(0, 1)  # noqa: E731
        bar = tqdm(total=len(pairs) * len(cfg.sizes) * cfg.steps, disable=not self.progress,
                   desc="MDM (sequential)", unit="step", leave=False)
        all_masks, targets, effects, independents, terms = [], [], [], [], []
        fold = self._fold(selector, x)
        with eval_mode(selector.model), frozen(selector.model, fold):
            for b, k in pairs:
                one, xb = selector.single(k), x[b:b + 1]
                base = pert.baseline(xb)
                with torch.no_grad():
                    target, masked = one(torch.cat([xb, base])).split(1)
                    effect, independent = masking_effect(target, masked)
                rec_w, l1_w = MDMLoss.of(cfg).weights(float(effect))

                def loss_terms(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    """This pair's reconstruction and area terms for the mask cells ``d (1, 1, a, a)``."""
                    out = one(pert.apply(xb, up(d), base))
                    return rec_w * ((out - target) ** 2).sum(), l1_w * d.abs().mean()

                masks = []
                for a in cfg.sizes:
                    d = torch.full((1, 1, a, a), cfg.init, device=x.device, requires_grad=True)
                    opt = torch.optim.Adam([d], lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
                    for _ in range(cfg.steps):
                        (d.grad,) = torch.autograd.grad(torch.add(*loss_terms(d)), d)
                        opt.step()
                        with torch.no_grad():
                            d.clamp_(0, 1)
                        bar.update()
                    with torch.no_grad():
                        masks.append(up(d)[0, 0])
                        terms.append(tuple(float(v) for v in loss_terms(d)))
                all_masks.append(torch.stack(masks))
                targets.append(target[0])
                effects.append(effect.cpu())
                independents.append(independent.cpu())
        bar.close()
        steps = torch.full((len(pairs), len(cfg.sizes)), cfg.steps)
        rec, area = torch.tensor(terms, dtype=torch.float32).view(len(pairs), len(cfg.sizes), 2).unbind(-1)
        return MaskFit(torch.stack(all_masks), steps, targets, time.perf_counter() - t0, 1, torch.cat(effects),
                       torch.cat(independents), reconstruction=rec, area=area)

    # ------------------------------------------------------------------ engine
    def _fold(self, selector: Selector, x: torch.Tensor) -> bool:
        """Whether the search runs the model with BatchNorm folded (``fold_batchnorm``): only where each folded
        convolution gives its convolution and BatchNorm's output on the images ``x`` (to float rounding); checked
        once per model."""
        model = selector.model
        if not self.config.fold_batchnorm:
            return False
        if id(model) not in self._folds:
            with torch.no_grad(), eval_mode(model), frozen(model), batchnorm_folded(model) as folded:
                error = folding_error(folded, lambda: selector.targets(x)) if folded else 0.0
            if error > FOLD_TOLERANCE:
                log.warning("folding BatchNorm changed %s's convolutions' outputs (by %.2g of their largest value): "
                            "searching without it", type(model).__name__, error)
            self._folds[id(model)] = bool(folded) and error <= FOLD_TOLERANCE
        return self._folds[id(model)]

    def _resolve_precision(self, grads, batch: int, device: torch.device, key: tuple) -> tuple[str, int]:
        """The precision of the passes: the config's, or for ``auto`` the faster of fp32 and bf16 (where the device
        has bfloat16) on the first step's passes, ``grads(precision, batch) -> (..., batch)``, bf16 kept only if
        ``AUTO_GAIN`` times faster; decided once per ``key`` (model, device, batch shape). Returns
        ``(precision, batch)``."""
        if self.config.precision != "auto":
            return self.config.precision, batch
        if key not in self._precisions:
            has_bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
            seconds = {}
            for precision in ("fp32", "bf16") if has_bf16 else ("fp32",):
                times = []
                for _ in range(3):  # a warm-up, then the faster of two
                    synchronize(device)
                    t0 = time.perf_counter()
                    *_, batch = grads(precision, batch)
                    synchronize(device)
                    times.append(time.perf_counter() - t0)
                seconds[precision] = min(times[1:])
            fast = "bf16" in seconds and seconds["fp32"] >= AUTO_GAIN * seconds["bf16"]
            self._precisions[key] = "bf16" if fast else "fp32"
        return self._precisions[key], batch

    def fit_masks(self, images: torch.Tensor, selector: Selector, pairs: list[tuple[int, int]] | None = None,
                  losses: Sequence[MDMLoss] | None = None) -> MaskFit:
        """Train the N masks of every (image, target) task together; see the module docstring.

        Args:
            images: ``(B, C, H, W)`` in the model's input space.
            selector: its ``K`` targets make ``T = B * K`` tasks, ordered image-major.
            pairs: only these ``(image b, target k)`` tasks, in this order.
            losses: one loss per task (default: the config's for all), e.g. a grid of ``lambda_l1`` in one search.
        """
        cfg = self.config
        device = model_device(selector.model)
        keep_freed_memory()
        x = images.to(device)
        if x.dim() != 4:
            raise UserError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        n_img, k = x.shape[0], selector.num_targets
        if pairs is None:
            pairs = [(b, j) for b in range(n_img) for j in range(k)]
        n_tasks, n_masks = len(pairs), len(cfg.sizes)
        if losses is not None and len(losses) != n_tasks:
            raise UserError(f"{len(losses)} losses for {n_tasks} tasks")
        h, w = x.shape[-2:]
        t0 = time.perf_counter()
        fold = self._fold(selector, x)
        with eval_mode(selector.model), frozen(selector.model, fold, cfg.channels_last):
            base = Perturbation(cfg.baseline, cfg.blur_sigma).baseline(x)
            if cfg.channels_last:  # then every masked image is channels-last as it is made, with no copy
                x, base = (t.contiguous(memory_format=torch.channels_last) for t in (x, base))
            diff = x - base  # every pass blends base + mask * diff
            task_img, task_out = torch.tensor(pairs, dtype=torch.long, device=device).view(-1, 2).unbind(1)
            with torch.no_grad():  # the images and their baselines in one pass
                both = selector.targets(torch.cat([x, base])).float()
                targets = both[:n_img][task_img, task_out]  # (T, ...)
                effect, independent = masking_effect(targets, both[n_img:][task_img, task_out])
            weights = [(losses[t] if losses is not None else MDMLoss.of(cfg)).weights(float(effect[t]))
                       for t in range(n_tasks)]
            rec_w, l1_w = torch.tensor(weights, device=device).view(-1, 2).unbind(1)  # (T,), (T,)
            ups = MaskUpsampler(cfg.sizes, (h, w), cfg.upsample, device)
            p = ups.init(n_tasks, cfg.init)  # (T, N, A, A)
            exp_avg, exp_sq = torch.zeros_like(p), torch.zeros_like(p)
            l1_grad = (l1_w[:, None] / ups.cells[None])[..., None, None]  # (T, N, 1, 1): d(l1_w mean|d|)/dd, d > 0
            steps = torch.zeros(n_tasks, n_masks, dtype=torch.long, device=device)
            active = (~independent)[:, None].repeat(1, n_masks)  # (T, N): an independent target is not trained
            prev_top, calm = None, torch.zeros(n_tasks, dtype=torch.long, device=device)
            batch = cfg.batch_masks or n_tasks * n_masks
            model_seconds = 0.0
            every = n_tasks * n_masks
            grads = lambda precision, b, act: self._masked_grads(  # noqa: E731
                _rows(ups(p).flatten(0, 1), act, every), act, diff, base, targets, rec_w, task_img, task_out,
                selector, n_masks, b, device, precision)
            first = active.flatten().nonzero().flatten()  # the first step's entries (none: nothing to time)
            key = (device, id(selector.model), tuple(x.shape[1:]), len(first), selector.num_targets)
            precision, batch = (self._resolve_precision(lambda prec, b: grads(prec, b, first), batch, device, key)
                                if len(first) else ("fp32" if cfg.precision == "auto" else cfg.precision, batch))
            bar = tqdm(total=cfg.steps_taken, disable=not self.progress, desc="MDM", unit="step", leave=False)
            act: torch.Tensor | None = None  # entries (t * N + i) still training: read where `active` changes only
            for step in range(1, cfg.steps_taken + 1):
                if act is None:  # (reading it waits for a GPU's queued work: not at every step)
                    act, keep = active.flatten().nonzero().flatten(), _kept(active)
                    bar.set_postfix(active=len(act))
                    if len(act) == 0:
                        break
                t1 = time.perf_counter()
                g_masks, rec_pass, batch = grads(precision, batch, act)  # (n, H, W), (n,): the entries training
                model_seconds += time.perf_counter() - t1
                with torch.no_grad():
                    g = _scattered(ups.to_cells(g_masks, None if len(act) == every else act % n_masks), act, every)
                    flush_subnormal(g, exp_avg, exp_sq)
                    steps += active
                    if cfg.between_passes == "linear":
                        self._linear_steps(p, g.view_as(p), _scattered(rec_pass, act, every).view(n_tasks, n_masks),
                                           l1_grad, exp_avg, exp_sq, keep, step)
                    else:
                        self._adam_update(p, g.view_as(p) + l1_grad * torch.sign(p), exp_avg, exp_sq, keep, step)
                if cfg.tol is not None and step % cfg.patience == 0 and step >= cfg.min_steps:
                    with torch.no_grad():  # where would each task's masks end if they stopped now?
                        top = self._top_masks(ups(self._projected(p, exp_avg, exp_sq, steps)))
                        if prev_top is not None:
                            change = 1 - _dice(top, prev_top)  # (T,)
                            calm = torch.where(change <= cfg.tol, calm + 1, torch.zeros_like(calm))
                            active &= (calm < 2)[:, None]  # the projection held over two checks in a row: stop
                            act = None
                        prev_top = top
                bar.update()
            bar.close()
            with torch.no_grad():  # the masks, and their loss terms (one fp32 forward pass of each masked image)
                q = self._projected(p, exp_avg, exp_sq, steps)
                masks = ups(q)
                rec = torch.cat([self._reconstruction(masks.flatten(0, 1)[c, None], c // n_masks, diff, base, targets,
                                                      rec_w, task_img, task_out, selector, device, "fp32")
                                 for c in torch.arange(n_tasks * n_masks, device=device).split(batch)])
                area = l1_w[:, None] * q.abs().sum((-2, -1)) / ups.cells
        return MaskFit(masks.cpu(), steps.cpu(), list(targets.cpu()), time.perf_counter() - t0, batch, effect.cpu(),
                       independent.cpu(), model_seconds, precision, rec.view(n_tasks, n_masks).cpu(), area.cpu())

    def _adam_scale(self) -> float:
        """Schedule steps per Adam step: 1 where every step of the schedule is taken (``between_passes: linear``),
        else ``step_scale``."""
        return 1.0 if self.config.between_passes == "linear" else self.config.step_scale

    def _adam_betas(self) -> tuple[float, float]:
        """Adam's decay rates for one step of ``_adam_scale()`` schedule steps: the moments keep their time
        constants."""
        k = self._adam_scale()
        return ADAM_BETAS[0] ** k, ADAM_BETAS[1] ** k

    def _linear_steps(self, p, g, rec, l1_grad, m, v, keep, t) -> None:
        """After pass ``t``: the schedule's Adam steps from ``schedule_at(t - 1)`` to ``schedule_at(t)`` of the
        entries still training (``keep``: :func:`_kept`), the reconstruction gradient of each from the activation
        linearised at the pass.

        With ``R`` a mask's reconstruction term at the pass (``rec (T, N)``), ``g`` its gradient on the cells
        ``(T, N, A, A)`` and ``D`` the cells' change since, the residual's norm ``sqrt(R)`` moves by
        ``<g, D> / (2 sqrt(R))``, so the gradient is ``g * (1 + <g, D> / (2 R))``: exact where the activation is
        linear in the masked image (for an activation of several values, along the residual's direction at the
        pass). It keeps the mask's feedback on its own reconstruction term between passes (a mask that the area
        term shrinks lets more of the activation's change through, which slows it), which one long step of the
        gradient at the pass (``between_passes: scaled``) misses. The area term's gradient is exact at every step.
        A step costs 14 elementwise operations on the packed masks, a pass a forward and backward pass of the
        model for each of them: on the demo model (2-core Intel Xeon) the 6.7 steps after a pass took 0.74 ms for
        one task's 27 masks (0.5 ms timed alone: the pass evicts their operands from the cache), against 10.4 ms
        for a bare pass of the 27 masked images."""
        start, end = self.config.schedule_at(t - 1), self.config.schedule_at(t)
        rate = torch.where(rec > 0, 0.5 / rec.clamp_min(TINY), 0.0)[..., None, None]
        betas, lr, intercept = self._adam_betas(), self.config.lr * self._adam_scale(), None
        for tau in range(start + 1, end + 1):
            grad = l1_grad * torch.sign(p)  # the area term's
            if intercept is None:  # the pass's own gradient
                intercept = 1 - (g * p).sum((-2, -1), keepdim=True) * rate  # (T, N, 1, 1): 1 - <g, d_pass> / (2R)
                grad += g
            else:  # g * (1 + <g, D> / (2R)), D = d - d_pass
                grad.addcmul_(g, torch.addcmul(intercept, (g * p).sum((-2, -1), keepdim=True), rate))
            adam_step(p, grad, m, v, tau, betas, lr, keep)

    def _adam_update(self, p, g, m, v, keep, t) -> None:
        """:func:`adam_step` at step ``t`` of the entries still training (``keep``: :func:`_kept`; all of them at
        step ``t``: an entry that stopped never resumes), with the learning rate and decay rates of one step of
        ``_adam_scale()`` schedule steps."""
        adam_step(p, g, m, v, t, self._adam_betas(), self.config.lr * self._adam_scale(), keep)

    def _projected(self, p, m, v, steps) -> torch.Tensor:
        """Packed masks with every entry that took fewer Adam steps than the schedule's ``horizon`` continued there:
        each element's last Adam update ``lr * m_hat / (sqrt(v_hat) + eps)`` repeated linearly, then clamped to
        [0, 1]. Elements still travelling at a steady rate reach where the full schedule would take them; elements
        at rest (``m_hat`` near 0) stay put. ``p`` itself is left as it is."""
        horizon = self.config.horizon
        if not bool((steps < horizon).any()):
            return p
        return self._extrapolate(p.clone(), m, v, self._adam_steps_at(steps)[..., None, None],
                                 self._adam_steps_at(horizon))

    def _adam_steps_at(self, passes):
        """Adam steps taken after ``passes`` passes (an int or a tensor of them): the schedule's with
        ``between_passes: linear``, one per pass with ``scaled``."""
        return self.config.schedule_at(passes) if self.config.between_passes == "linear" else passes

    def _extrapolate(self, p, m, v, t, horizon):
        """Continue each element's last Adam step from Adam step ``t`` (per entry) to ``horizon`` linearly, in
        place."""
        b1, b2 = self._adam_betas()
        lr = self.config.lr * self._adam_scale()
        tf = t.to(p.dtype).clamp_min(1)
        rate = (m / (1 - b1**tf)) / ((v / (1 - b2**tf)).sqrt() + ADAM_EPS)
        return p.sub_(lr * (horizon - tf).clamp_min(0) * rate).clamp_(0, 1)

    def _top_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Top-``stop_percentile`` masks ``(T, H*W)`` of the heatmaps of upsampled masks ``(T, N, H, W)``."""
        heat = masks.sum(1).flatten(1)
        heat = torch.where(heat < self.config.gamma, torch.zeros_like(heat), heat)
        thr = torch.quantile(heat, self.config.stop_percentile / 100, dim=1, keepdim=True)
        return (heat >= thr) & (heat > heat.min(1, keepdim=True).values)

    def _reconstruction(self, m, task, diff, base, targets, rec_w, task_img, task_out, selector, device, precision):
        """The weighted reconstruction term ``(n,)`` of upsampled masks ``m (n, 1, H, W)`` of tasks ``task (n,)``:
        one pass of the masked images (``diff``: the images less their ``base``lines) in ``precision``."""
        img = task_img[task]
        rows = (lambda t: t.expand(len(task), *t.shape[1:])) if len(diff) == 1 else (lambda t: t[img])  # noqa: E731
        xm = Perturbation.blend(m, rows(base), rows(diff))  # one image: views, not a copy per masked image
        with autocast(device, precision):
            out = selector.targets(xm)
        out = out[torch.arange(len(task), device=device), task_out[task]].float()
        return ((out - targets[task]) ** 2).reshape(len(task), -1).sum(1) * rec_w[task]

    def _masked_grads(self, masks, act, diff, base, targets, rec_w, task_img, task_out, selector, n_masks, batch,
                      device, precision):
        """d(sum of weighted reconstruction losses)/d(mask) ``(n, H, W)`` for the active entries ``act`` and their
        upsampled masks ``masks (n, H, W)``, and those losses ``(n,)``, in chunks of ``batch`` masked images, the
        passes in ``precision``.

        Halves ``batch`` and retries on out-of-memory. Returns ``(grad, losses, batch)``.
        """
        while True:
            try:
                grads, losses = [], []
                for s in range(0, len(act), batch):  # slices: views of the masks, no copies
                    m = masks[s:s + batch, None].detach().requires_grad_()
                    rec = self._reconstruction(m, act[s:s + batch] // n_masks, diff, base, targets, rec_w, task_img,
                                               task_out, selector, device, precision)
                    (g,) = torch.autograd.grad(rec.sum(), m)
                    grads.append(g[:, 0])
                    losses.append(rec.detach())
                return (grads[0], losses[0], batch) if len(grads) == 1 else (torch.cat(grads), torch.cat(losses), batch)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
                if not _is_oom(e):
                    raise
                if batch <= 1:
                    raise UserError("out of memory even with one masked image per batch; use a smaller input "
                                    "or another device") from None
                batch = max(1, batch // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
