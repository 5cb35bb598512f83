"""The frozen network a search runs thousands of times (MDM: 10,800-54,000 passes per localisation).

- Its parameters need no gradient, so autograd neither computes nor keeps what only their gradients need.
- BatchNorm folded into the convolution before it: in eval mode ``BN(conv(x))`` is one convolution with rescaled
  weights and a bias, so the passes skip BatchNorm's forward and backward. The activations equal the unfolded
  network's up to float rounding.
- Its 4-D weights laid out channels-last (the search lays its masked images out the same way).

On this project's 2-core CPU both together made bare passes of the tiny backbones and ResNet-18 1.26-1.41x faster,
and DenseNet-121's 0.91x, slowed by channels-last (``python scripts/bench_frozen.py``; README, "The network, prepared
for the search"). Everything is put back when the block ends.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torch.nn.modules.batchnorm import _BatchNorm


def _count_batchnorm(module: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in module.modules())


def _folded_copy(module: nn.Module) -> nn.Module | None:
    """A traced copy of ``module`` with every conv -> BatchNorm pair folded, or None where ``module`` does not trace
    (data-dependent control flow) or has no such pair."""
    try:
        folded = fuse(module)
    except Exception:  # noqa: BLE001 - torch.fx raises many kinds on modules it cannot trace; then we look deeper
        return None
    return folded if _count_batchnorm(folded) < _count_batchnorm(module) else None


@contextlib.contextmanager
def batchnorm_folded(model: nn.Module) -> Iterator[list[tuple[nn.Module, nn.Module]]]:
    """Within the block, the largest submodules of ``model`` that trace with ``torch.fx`` and hold conv -> BatchNorm
    pairs are replaced by copies with the pairs folded (the root is kept, so every method of the model still works);
    the originals are put back afterwards. Yields the ``(original, copy)`` pairs (none: nothing to fold).

    For a model in eval mode whose weights do not change within the block (the copies hold their own); hooks on the
    replaced submodules do not run in the copies.
    """
    if model.training:
        raise ValueError("BatchNorm is folded only in eval mode (its running statistics)")
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) or _count_batchnorm(child) == 0:
                continue
            copy = None if isinstance(child, fx.GraphModule) else _folded_copy(child)
            if copy is None:
                visit(child)
                continue
            for p in copy.parameters():
                p.requires_grad_(False)
            setattr(parent, name, copy)
            swaps.append((parent, name, child, copy))

    try:
        visit(model)
        yield [(child, copy) for _, _, child, copy in swaps]
    finally:
        for parent, name, child, _ in reversed(swaps):
            setattr(parent, name, child)


def folding_error(swaps: list[tuple[nn.Module, nn.Module]], run: Callable[[], object]) -> float:
    """The largest difference, relative to the output's largest value, between each folded copy's output and its
    original's on the same input, over the calls that ``run()`` (a forward pass of the model with ``swaps`` in place,
    under ``torch.no_grad``) makes; 0 where no copy is called. Float rounding gives about 1e-6; a copy traced other
    than its original runs, far more."""
    calls: list[tuple[nn.Module, tuple, dict, object]] = []
    def keep(orig: nn.Module) -> Callable:
        return lambda _module, args, kwargs, out: calls.append((orig, args, kwargs, out))

    hooks = [copy.register_forward_hook(keep(orig), with_kwargs=True) for orig, copy in swaps]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    worst = 0.0
    for orig, args, kwargs, out in calls:
        expected = orig(*args, **kwargs)
        for a, b in zip(_tensors(out), _tensors(expected)):
            scale = float(b.abs().max()) if b.numel() else 0.0
            worst = max(worst, float((a - b).abs().max()) / scale if scale > 0 else float((a != b).any()))
    return worst


def _tensors(value: object) -> list[torch.Tensor]:
    """The floating tensors in a module's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value.float()] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


@contextlib.contextmanager
def channels_last_layout(model: nn.Module) -> Iterator[None]:
    """``model``'s 4-D parameters and buffers laid out channels-last within the block, as before afterwards."""
    saved = []
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
            saved.append((t, t.data))
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for t, data in saved:
            t.data = data


@contextlib.contextmanager
def frozen(model: nn.Module, fold_batchnorm: bool = False, channels_last: bool = False) -> Iterator[None]:
    """``model`` (in eval mode where ``fold_batchnorm``) frozen for a search: no parameter needs a gradient within
    the block; optionally its BatchNorm folded (:func:`batchnorm_folded`) and its weights channels-last
    (:func:`channels_last_layout`). Everything is restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with contextlib.ExitStack() as stack:
            if fold_batchnorm:
                stack.enter_context(batchnorm_folded(model))
            if channels_last:
                stack.enter_context(channels_last_layout(model))
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
