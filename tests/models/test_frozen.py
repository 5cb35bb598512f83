"""The frozen network of a search: BatchNorm folded, channels-last, all of it put back afterwards."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_model
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from protomdm import MDMLocalizer
from protomdm.explain.selectors import PrototypeSelector
from protomdm.models import frozen as frozen_module
from protomdm.models.frozen import batchnorm_folded, channels_last_layout, folding_error, frozen


def _with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine weights away from their defaults, so that folding them changes the weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def test_folding_keeps_the_activations_and_puts_everything_back():
    model = _with_running_stats(tiny_model("protopnet", seed=1, img_size=(32, 32)))
    sel = PrototypeSelector(model, [0, 3])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    features = model.features
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        plain = sel.targets(x)
        with batchnorm_folded(model) as folded:
            assert [conv for conv, _, _ in folded] == convs  # the tiny backbone's four conv -> BatchNorm pairs
            assert model.features is features  # only the leaves are swapped
            assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
            out = sel.targets(x)
            assert 0 < folding_error(folded, lambda: sel.targets(x)) < 1e-5  # float rounding only
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-5)
    assert [m for m in features if isinstance(m, nn.Conv2d)] == convs
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _Branchy(nn.Module):
    """Does not trace (its control flow reads a tensor's value); its child does. ``twice`` is a method of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) if float(x.sum()) > 0 else -self.block(x)

    def twice(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.block(x)


def test_folding_looks_inside_what_does_not_trace_and_keeps_every_method():
    net = _with_running_stats(nn.Sequential(_Branchy(), nn.Conv2d(4, 2, 1)))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        plain, twice = net(x), net[0].twice(x)
        with batchnorm_folded(net) as folded:
            assert len(folded) == 1 and isinstance(net[0].block[1], nn.Identity)
            torch.testing.assert_close(net(x), plain, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(net[0].twice(x), twice, rtol=1e-4, atol=1e-5)  # an adapter's own method
    assert isinstance(net[0].block[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="eval mode"), batchnorm_folded(net.train()):
        pass


def test_channels_last_and_frozen_are_undone():
    model = _with_running_stats(tiny_model("protopnet", seed=1, img_size=(32, 32)))
    model.prototype_vectors.requires_grad_(True)
    conv = model.features[0]
    with channels_last_layout(model):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert conv.weight.is_contiguous()
    with frozen(model, fold_batchnorm=True, channels_last=True):
        assert not any(p.requires_grad for p in model.parameters())
        assert model.features[0] is not conv and isinstance(model.features[1], nn.Identity)
    assert model.features[0] is conv and conv.weight.is_contiguous() and model.prototype_vectors.requires_grad


def test_mdm_with_folding_equals_the_search_without():
    model = _with_running_stats(tiny_model("protopnet", seed=1, img_size=(32, 32)))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    sel = PrototypeSelector(model, 3)
    fits = [MDMLocalizer(sizes=(3, 5, 8), steps=25, gamma=0.0, fold_batchnorm=fold, channels_last=cl).fit_masks(x, sel)
            for fold, cl in ((False, False), (True, True))]
    assert (fits[0].masks - 0.5).abs().max() > 0.02  # the masks moved
    torch.testing.assert_close(fits[1].masks, fits[0].masks, atol=1e-4, rtol=0)


def test_mdm_does_not_fold_where_folding_changes_the_activations(monkeypatch, caplog):
    model = _with_running_stats(tiny_model("protopnet", seed=1, img_size=(32, 32)))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    sel = PrototypeSelector(model, 3)

    def wrong_fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:  # folding gone wrong
        fused = fuse_conv_bn_eval(conv, bn)
        with torch.no_grad():
            fused.weight.mul_(2)
        return fused

    monkeypatch.setattr(frozen_module, "fuse_conv_bn_eval", wrong_fuse)
    plain = MDMLocalizer(sizes=(4, 6), steps=10, gamma=0.0, fold_batchnorm=False).fit_masks(x, sel)
    with caplog.at_level(logging.WARNING):
        guarded = MDMLocalizer(sizes=(4, 6), steps=10, gamma=0.0).fit_masks(x, sel)
    assert "searching without it" in caplog.text
    torch.testing.assert_close(guarded.masks, plain.masks, atol=1e-5, rtol=0)
