"""Multiple Dynamic Mask (MDM) localisation (Peng et al.).

For each of N mask sizes ``a_i`` a mask vector ``d_i`` of ``a_i x a_i`` cells starts at 0.5, is upsampled to the
input (``M_i``, kept in [0, 1]) and trained with Adam, the network frozen, to minimise

    ||f_t(X) - f_t(M_i * X + (1 - M_i) * B)||^2 / ||f_t(X) - f_t(B)||^2 + lambda * mean|d_i|

(``B`` the masking baseline: zeros as in the paper, a blurred or a mean image). The paper's reconstruction term is
divided by the effect of masking everything, so that it reads "the share of the activation's change that the mask
lets through" and one ``lambda`` serves every model and activation scale (ProtoPNet's log similarity, XProtoNet's
occurrence-weighted similarity, a plain classifier's logit). For one image this is the paper's loss with
``lambda`` scaled by ``||f_t(X) - f_t(B)||^2``. An activation that masking the whole image does not change does
not depend on the image: its localisation is refused with the ``empty`` status rather than trained to nothing.
The heatmap is ``sum_i M_i``, set to zero where that sum is below ``gamma``, and normalised to [0, 1].

The masks are independent, so all of them (and those of several images and targets) train together, one batch
per step; :meth:`MDMLocalizer.localize_sequential` is the paper's one-mask-at-a-time schedule, kept as the
reference that the batched engine must reproduce.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import MDMConfig
from ..errors import UserError
from .localization import Localization, Localizer, eval_mode, heatmap_problem, model_device
from .perturbation import Perturbation, independence_reason, masking_effect
from .registry import register_localizer
from .selectors import Selector

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def images_per_search(requested: int | None, device: torch.device) -> int:
    """How many images share one MDM search: ``requested``, else 8 on a GPU and 4 on the CPU (measured there: 1.24x
    faster than one at a time)."""
    if requested is not None and requested < 1:
        raise UserError(f"at least 1 image per search, got {requested}")
    return requested or (8 if device.type == "cuda" else 4)


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of bool masks ``(T, P)`` row by row (1 where both are empty)."""
    inter = (a & b).sum(1).float()
    total = (a.sum(1) + b.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def masks_to_heatmap(masks: np.ndarray | torch.Tensor, gamma: float) -> np.ndarray:
    """MDM heatmap from upsampled masks ``(N, H, W)``: their sum, zero where the sum < gamma, scaled to [0, 1]."""
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    s = m.astype(np.float64).sum(0)
    s[s < gamma] = 0.0
    peak = s.max()
    return (s / peak if peak > 0 else s).astype(np.float32)


@dataclass
class MaskFit:
    """Raw result of the mask search for T tasks (image x target pairs).

    Attributes:
        masks: ``(T, N, H, W)`` upsampled masks in [0, 1].
        steps: ``(T, N)`` Adam steps each mask took.
        targets: the activation on the unmasked images, one ``(...)`` tensor per task.
        seconds: wall time of the whole search.
        batch_masks: the batch size finally used (smaller than asked after an out-of-memory).
        effect: ``(T,)`` ``||f(X) - f(B)||^2``, the reconstruction term's scale.
        independent: ``(T,)`` tasks whose activation masking does not change (not trained; status ``empty``).
    """

    masks: torch.Tensor
    steps: torch.Tensor
    targets: list[torch.Tensor]
    seconds: float
    batch_masks: int
    effect: torch.Tensor
    independent: torch.Tensor


@register_localizer("mdm", settings=MDMConfig)
class MDMLocalizer(Localizer):
    """Multiple Dynamic Mask localizer.

    Args:
        config: an :class:`~protomdm.config.MDMConfig` (defaults: the paper's settings).
        progress: show a progress bar over the optimisation steps.
        **overrides: any :class:`MDMConfig` field, e.g. ``steps=500``.

    Example:
        >>> loc = MDMLocalizer(steps=300).localize(x, PrototypeSelector(model, prototype=3))
        >>> loc.heatmap.shape, loc.box(90)
    """

    def __init__(self, config: MDMConfig | None = None, progress: bool = False, **overrides) -> None:
        self.config = dataclasses.replace(config or MDMConfig(), **overrides)
        self.progress = progress

    # ------------------------------------------------------------------ public API
    def localize_many(self, images: torch.Tensor, selector: Selector) -> list[list[Localization]]:
        """Localize every target of ``selector`` in every image of ``images: (B, C, H, W)``, all in one search.

        Returns:
            ``result[b][k]``: the localisation of target ``k`` in image ``b``. Each one's ``seconds`` is its share
            of the batched search's wall time.
        """
        fit = self.fit_masks(images, selector)
        k = selector.num_targets
        return [[self._to_localization(fit, b * k + j, selector.single(j)) for j in range(k)]
                for b in range(images.shape[0])]

    def localize_pairs(self, images: torch.Tensor, selector: Selector, pairs: list[tuple[int, int]]
                       ) -> list[Localization]:
        """Target ``k`` of ``selector`` in image ``b`` for every ``(b, k)`` of ``pairs``, all in one search."""
        fit = self.fit_masks(images, selector, pairs)
        return [self._to_localization(fit, t, selector.single(k)) for t, (_, k) in enumerate(pairs)]

    def localize_sequential(self, image: torch.Tensor, selector: Selector) -> Localization:
        """The paper's schedule: each mask trained alone with ``torch.optim.Adam`` for the full ``steps``.

        The reference for tests and ``protomdm bench``; ignores ``tol``, ``batch_masks`` and ``precision``.
        """
        cfg = self.config
        x = (image[None] if image.dim() == 3 else image).to(model_device(selector.model))
        h, w = x.shape[-2:]
        t0 = time.perf_counter()
        with eval_mode(selector.model):
            pert = Perturbation(cfg.baseline, cfg.blur_sigma)
            base = pert.baseline(x)
            with torch.no_grad():
                target, masked = selector(torch.cat([x, base])).split(1)
                effect, independent = masking_effect(target, masked)
            scale = effect.clamp_min(torch.finfo(effect.dtype).tiny)
            masks = []
            bar = tqdm(total=len(cfg.sizes) * cfg.steps, disable=not self.progress, desc="MDM (sequential)",
                       unit="step", leave=False)
            for a in cfg.sizes:
                d = torch.full((1, 1, a, a), cfg.init, device=x.device, requires_grad=True)
                opt = torch.optim.Adam([d], lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
                for _ in range(cfg.steps):
                    m = self._upsample(d, (h, w))
                    out = selector(pert.apply(x, m, base))
                    loss = ((out - target) ** 2).sum() / scale.sum() + cfg.lambda_l1 * d.abs().mean()
                    (d.grad,) = torch.autograd.grad(loss, d)
                    opt.step()
                    with torch.no_grad():
                        d.clamp_(0, 1)
                    bar.update()
                masks.append(self._upsample(d.detach(), (h, w))[0, 0])
            bar.close()
        steps = torch.full((1, len(cfg.sizes)), cfg.steps)
        fit = MaskFit(torch.stack(masks)[None], steps, [target[0]], time.perf_counter() - t0, 1, effect.cpu(),
                      independent.cpu())
        loc = self._to_localization(fit, 0, selector)
        loc.settings["schedule"] = "sequential"
        return loc

    # ------------------------------------------------------------------ engine
    def _upsample(self, d: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        mode = self.config.upsample
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(d, size=size, mode=mode, **kwargs).clamp(0, 1)

    def _autocast(self, device: torch.device):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def fit_masks(self, images: torch.Tensor, selector: Selector, pairs: list[tuple[int, int]] | None = None
                  ) -> MaskFit:
        """Train the N masks of every (image, target) task together; see the module docstring.

        Args:
            images: ``(B, C, H, W)`` in the model's input space.
            selector: its ``K`` targets make ``T = B * K`` tasks, ordered image-major.
            pairs: only these ``(image b, target k)`` tasks, in this order.
        """
        cfg = self.config
        device = model_device(selector.model)
        x = images.to(device)
        if x.dim() != 4:
            raise UserError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        n_img, k = x.shape[0], selector.num_targets
        if pairs is None:
            pairs = [(b, j) for b in range(n_img) for j in range(k)]
        n_tasks, n_masks = len(pairs), len(cfg.sizes)
        h, w = x.shape[-2:]
        t0 = time.perf_counter()
        with eval_mode(selector.model):
            if cfg.channels_last and device.type == "cuda":
                selector.model.to(memory_format=torch.channels_last)
            base = Perturbation(cfg.baseline, cfg.blur_sigma).baseline(x)
            task_img, task_out = torch.tensor(pairs, dtype=torch.long, device=device).view(-1, 2).unbind(1)
            with torch.no_grad():  # the images and their baselines in one pass
                both = selector.targets(torch.cat([x, base])).float()
                targets = both[:n_img][task_img, task_out]  # (T, ...)
                effect, independent = masking_effect(targets, both[n_img:][task_img, task_out])
            scale = effect.clamp_min(torch.finfo(effect.dtype).tiny)
            params = [torch.full((n_tasks, 1, a, a), cfg.init, device=device) for a in cfg.sizes]
            exp_avg = [torch.zeros_like(p) for p in params]
            exp_sq = [torch.zeros_like(p) for p in params]
            steps = torch.zeros(n_tasks, n_masks, dtype=torch.long, device=device)
            active = (~independent)[:, None].repeat(1, n_masks)  # (T, N): an independent target is not trained
            prev_top, calm = None, torch.zeros(n_tasks, dtype=torch.long, device=device)
            batch = cfg.batch_masks or n_tasks * n_masks
            bar = tqdm(total=cfg.steps_taken, disable=not self.progress, desc="MDM", unit="step", leave=False)
            for step in range(1, cfg.steps_taken + 1):
                act = active.flatten().nonzero().flatten()  # entries (t * N + i) still training
                if act.numel() == 0:
                    break
                ps = [p.requires_grad_() for p in params]
                up = torch.stack([self._upsample(p, (h, w))[:, 0] for p in ps], 1)  # (T, N, H, W)
                rec_grad, batch = self._masked_grads(up.detach().flatten(0, 1), act, x, base, targets, scale,
                                                     task_img, task_out, selector, n_masks, batch, device)
                reg_terms = torch.stack([cfg.lambda_l1 * p.abs().mean((1, 2, 3)) for p in ps], 1)  # (T, N)
                grads = torch.autograd.grad([up, reg_terms], ps, [rec_grad.view_as(up), torch.ones_like(reg_terms)])
                with torch.no_grad():
                    steps += active
                    for i, (p, g) in enumerate(zip(params, grads)):
                        rows = active[:, i]
                        if rows.any():
                            self._adam_update(p, g, exp_avg[i], exp_sq[i], rows, step)
                        p.requires_grad_(False).clamp_(0, 1)
                if cfg.tol is not None and step % cfg.patience == 0 and step >= cfg.min_steps:
                    with torch.no_grad():  # where would each task's masks end if they stopped now?
                        top = self._top_masks(self._projected_masks(params, exp_avg, exp_sq, steps, (h, w)))
                        if prev_top is not None:
                            change = 1 - _dice(top, prev_top)  # (T,)
                            calm = torch.where(change <= cfg.tol, calm + 1, torch.zeros_like(calm))
                            active &= (calm < 2)[:, None]  # the projection held over two checks in a row: stop
                        prev_top = top
                bar.update()
                bar.set_postfix(active=int(active.sum()))
            bar.close()
            with torch.no_grad():
                masks = self._projected_masks(params, exp_avg, exp_sq, steps, (h, w))
        return MaskFit(masks.cpu(), steps.cpu(), list(targets.cpu()), time.perf_counter() - t0, batch, effect.cpu(),
                       independent.cpu())

    def _projected_masks(self, params, exp_avg, exp_sq, steps, size) -> torch.Tensor:
        """Upsampled masks ``(T, N, H, W)`` with every mask that took fewer than ``steps`` Adam steps extrapolated to
        the end of the schedule (see :meth:`_extrapolate`); the parameters themselves are left as they are."""
        out = []
        for i, p in enumerate(params):
            q = p.clone()
            if bool((steps[:, i] < self.config.steps).any()):
                self._extrapolate(q, exp_avg[i], exp_sq[i], steps[:, i].view(-1, 1, 1, 1), self.config.steps)
            out.append(self._upsample(q, size)[:, 0])
        return torch.stack(out, 1)

    def _top_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Top-``stop_percentile`` masks ``(T, H*W)`` of the heatmaps of upsampled masks ``(T, N, H, W)``."""
        heat = masks.sum(1).flatten(1)
        heat = torch.where(heat < self.config.gamma, torch.zeros_like(heat), heat)
        thr = torch.quantile(heat, self.config.stop_percentile / 100, dim=1, keepdim=True)
        return (heat >= thr) & (heat > heat.min(1, keepdim=True).values)

    def _to_localization(self, fit: MaskFit, task: int, selector: Selector) -> Localization:
        target = fit.targets[task]
        heatmap = masks_to_heatmap(fit.masks[task], self.config.gamma)
        status, reason = "ok", heatmap_problem(heatmap)
        if bool(fit.independent[task]):
            status, reason = "empty", independence_reason(float(fit.effect[task]), target)
        elif reason:
            status = "empty"
            if heatmap.max() <= 0:
                reason += f" (every pixel's mask sum stays below gamma {self.config.gamma:g}); try a smaller lambda_l1"
        return Localization(
            heatmap=heatmap,
            method="mdm",
            score=float(target.float().mean()),
            settings={**dataclasses.asdict(self.config), "batch_masks_used": fit.batch_masks,
                      "selector": selector.describe(), "schedule": "batched"},
            seconds=fit.seconds / len(fit.targets),
            device=str(model_device(selector.model)),
            steps=int(fit.steps[task].max()),
            status=status,
            reason=reason,
        )

    def _masked_grads(self, masks, act, x, base, targets, scale, task_img, task_out, selector, n_masks, batch, device):
        """d(sum of normalised reconstruction losses)/d(mask) for the active entries, in chunks of ``batch``.

        Halves ``batch`` and retries on out-of-memory. Returns ``(grad (T*N, H, W), batch)``.
        """
        while True:
            try:
                grad = torch.zeros_like(masks)
                for chunk in act.split(batch):
                    m = masks[chunk][:, None].requires_grad_()
                    img = task_img[chunk // n_masks]
                    xm = Perturbation.apply(x[img], m, base[img])
                    if self.config.channels_last and device.type == "cuda":
                        xm = xm.contiguous(memory_format=torch.channels_last)
                    with self._autocast(device):
                        out = selector.targets(xm)
                    out = out[torch.arange(len(chunk), device=device), task_out[chunk // n_masks]].float()
                    task = chunk // n_masks
                    rec = ((out - targets[task]) ** 2).reshape(len(chunk), -1).sum(1) / scale[task]
                    (g,) = torch.autograd.grad(rec.sum(), m)
                    grad[chunk] = g[:, 0]
                return grad, batch
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
                if not _is_oom(e):
                    raise
                if batch <= 1:
                    raise UserError("out of memory even with one masked image per batch; use a smaller input "
                                    "or another device") from None
                batch = max(1, batch // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    def _extrapolate(self, p, m, v, t, horizon):
        """Continue each element's last Adam step ``lr * m_hat / (sqrt(v_hat) + eps)`` linearly from step ``t``
        (per task) to ``horizon``, then clamp to [0, 1]: elements still travelling at a steady rate reach where the
        full schedule would take them; elements at rest (``m_hat`` near 0) stay put."""
        b1, b2 = ADAM_BETAS
        tf = t.to(p.dtype).clamp_min(1)
        rate = (m / (1 - b1**tf)) / ((v / (1 - b2**tf)).sqrt() + ADAM_EPS)
        p.sub_(self.config.lr * (horizon - tf).clamp_min(0) * rate).clamp_(0, 1)

    def _adam_update(self, p, g, m, v, rows, t):
        """torch.optim.Adam's update (no weight decay) of the ``rows`` still training, all at step ``t``."""
        b1, b2 = ADAM_BETAS
        step = self.config.lr / (1 - b1**t)
        if bool(rows.all()):  # the common case: in place, no gathers
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, v.sqrt().div_(math.sqrt(1 - b2**t)).add_(ADAM_EPS), value=-step)
            return
        m[rows] = b1 * m[rows] + (1 - b1) * g[rows]
        v[rows] = b2 * v[rows] + (1 - b2) * g[rows] ** 2
        denom = v[rows].sqrt() / math.sqrt(1 - b2**t) + ADAM_EPS
        p[rows] = p[rows] - step * m[rows] / denom
