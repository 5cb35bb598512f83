"""The frozen network a search runs thousands of times (MDM: 8,100-54,000 passes per localisation).

- Its parameters need no gradient, so autograd neither computes nor keeps what only their gradients need.
- BatchNorm folded into the convolution before it: in eval mode ``BN(conv(x))`` is one convolution with rescaled
  weights and a bias, so the passes skip BatchNorm's forward and backward. The activations equal the unfolded
  network's up to float rounding.
- Its 4-D weights laid out channels-last (the search lays its masked images out the same way).

On this project's 2-core CPU both together made bare passes of the tiny backbones and ResNet-18 1.29-1.61x faster,
and DenseNet-121's 1.01x (channels-last slows it; ``python scripts/bench_frozen.py``; README, "The network, prepared
for the search"). Everything is put back when the block ends.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _conv_batchnorm_pairs(module: nn.Module) -> list[tuple[str, str]] | None:
    """The qualified names ``(conv, bn)`` of the conv -> BatchNorm pairs in ``module``'s forward as ``torch.fx``
    traces it: each module called once, the conv's output used by the BatchNorm alone, the BatchNorm with running
    statistics. None where ``module`` does not trace (data-dependent control flow)."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - torch.fx raises many kinds on modules it cannot trace; then we look deeper
        return None
    modules = dict(module.named_modules())
    nodes = [n for n in graph.nodes if n.op == "call_module"]
    calls = Counter(n.target for n in nodes)
    pairs = []
    for node in nodes:
        bn, src = modules.get(str(node.target)), node.args[0] if node.args else None
        if not (isinstance(bn, _BatchNorm) and bn.track_running_stats and isinstance(src, fx.Node)
                and src.op == "call_module" and type(modules.get(str(src.target))) in CONVS):
            continue
        if len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _swap(root: nn.Module, name: str, new: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """Put ``new`` at ``root``'s submodule ``name``; returns what undoes it."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name)
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return parent, attr, old


@contextlib.contextmanager
def batchnorm_folded(model: nn.Module) -> Iterator[list[tuple[nn.Module, nn.Module, nn.Module]]]:
    """Within the block, each conv -> BatchNorm pair of ``model`` is folded: the conv swapped for one with the
    BatchNorm's scale and shift in its weights and bias, the BatchNorm for ``nn.Identity``; both put back afterwards.
    The pairs are read from ``torch.fx`` traces of the largest submodules that trace (``model`` itself where it does);
    only leaf modules are swapped, so every module keeps its own methods. Yields ``(conv, bn, folded conv)`` per pair.

    For a model in eval mode whose weights do not change within the block (the folded convs hold their own); hooks
    on the swapped modules do not run.
    """
    if model.training:
        raise ValueError("BatchNorm is folded only in eval mode (its running statistics)")
    undo: list[tuple[nn.Module, str, nn.Module]] = []
    folded: list[tuple[nn.Module, nn.Module, nn.Module]] = []

    def visit(module: nn.Module) -> None:
        if not any(isinstance(m, _BatchNorm) for m in module.modules()):
            return
        pairs = _conv_batchnorm_pairs(module)
        if pairs is None:
            for child in module.children():
                visit(child)
            return
        for conv_name, bn_name in pairs:
            conv = cast(nn.Conv2d, module.get_submodule(conv_name))  # or Conv1d, Conv3d
            bn = cast(_BatchNorm, module.get_submodule(bn_name))
            fused = fuse_conv_bn_eval(conv, bn)
            fused.requires_grad_(False)
            undo.extend([_swap(module, conv_name, fused), _swap(module, bn_name, nn.Identity())])
            folded.append((conv, bn, fused))

    try:
        visit(model)
        yield folded
    finally:
        for parent, attr, old in reversed(undo):
            setattr(parent, attr, old)


def folding_error(folded: list[tuple[nn.Module, nn.Module, nn.Module]], run: Callable[[], object]) -> float:
    """The largest difference, relative to the output's largest value, between each folded conv's output and its
    conv and BatchNorm's on the same input, over the calls that ``run()`` (a forward pass of the model with the
    pairs folded, under ``torch.no_grad``) makes; 0 where no folded conv is called. Float rounding gives about 1e-6."""
    calls: list[tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]] = []

    def keep(conv: nn.Module, bn: nn.Module) -> Callable:
        return lambda _module, args, out: calls.append((conv, bn, args[0], out.clone()))  # before an in-place ReLU

    hooks = [fused.register_forward_hook(keep(conv, bn)) for conv, bn, fused in folded]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    worst = 0.0
    for conv, bn, x, out in calls:
        expected = bn(conv(x)).float()
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        diff = float((out.float() - expected).abs().max()) if expected.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else float(diff > 0))
    return worst


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
