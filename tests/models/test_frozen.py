"""The frozen network of a search: BatchNorm folded, channels-last, all of it put back afterwards."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_model
from torch import nn

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
    with torch.no_grad():
        plain = sel.targets(x)
        with batchnorm_folded(model) as swaps:
            assert swaps == [(features, model.features)]  # the backbone, its four conv -> BatchNorm pairs folded
            assert not any(isinstance(m, nn.BatchNorm2d) for m in model.features.modules())
            folded = sel.targets(x)
            assert 0 < folding_error(swaps, lambda: sel.targets(x)) < 1e-5  # float rounding only
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5)
    assert model.features is features
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _Branchy(nn.Module):
    """Does not trace (its control flow reads a tensor's value); its child does."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) if float(x.sum()) > 0 else -self.block(x)


def test_folding_looks_inside_a_module_that_does_not_trace():
    net = _with_running_stats(nn.Sequential(_Branchy(), nn.Conv2d(4, 2, 1)))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        plain = net(x)
        with batchnorm_folded(net) as swaps:
            assert len(swaps) == 1 and isinstance(net[0], _Branchy)  # the root's child kept, its block folded
            torch.testing.assert_close(net(x), plain, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"), batchnorm_folded(net.train()):
        pass


def test_channels_last_and_frozen_are_undone():
    model = _with_running_stats(tiny_model("protopnet", seed=1, img_size=(32, 32)))
    model.prototype_vectors.requires_grad_(True)
    features, conv = model.features, model.features[0]
    with channels_last_layout(model):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert conv.weight.is_contiguous()
    with frozen(model, fold_batchnorm=True, channels_last=True):
        assert not any(p.requires_grad for p in model.parameters())
        assert model.features is not features
    assert model.features is features and features[0] is conv and conv.weight.is_contiguous()
    assert model.prototype_vectors.requires_grad


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

    def wrong_fuse(module: nn.Module) -> nn.Module:  # a trace that runs other than the module
        folded = torch.fx.experimental.optimization.fuse(module)
        with torch.no_grad():
            next(folded.parameters()).mul_(2)
        return folded

    monkeypatch.setattr(frozen_module, "fuse", wrong_fuse)
    plain = MDMLocalizer(sizes=(4, 6), steps=10, gamma=0.0, fold_batchnorm=False).fit_masks(x, sel)
    with caplog.at_level(logging.WARNING):
        guarded = MDMLocalizer(sizes=(4, 6), steps=10, gamma=0.0).fit_masks(x, sel)
    assert "searching without it" in caplog.text
    torch.testing.assert_close(guarded.masks, plain.masks, atol=1e-5, rtol=0)
