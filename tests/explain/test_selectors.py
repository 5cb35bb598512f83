import pytest
import torch
import torchvision
from conftest import tiny_model

from protomdm import LogitSelector, PrototypeSelector
from protomdm.errors import UserError


def test_prototype_selector_map_and_score(architecture):
    m = tiny_model(architecture)
    x = torch.randn(2, 3, 48, 48)
    s_map = PrototypeSelector(m, 4, reduce="map")
    s_score = PrototypeSelector(m, 4, reduce="score")
    assert s_map(x).shape == (2, 6, 6)
    assert s_score(x).shape == (2,)
    assert torch.allclose(s_score(x), m.prototype_scores(x)[:, 4])
    if architecture == "protopnet":
        assert torch.allclose(s_score(x), s_map(x).flatten(1).max(1).values, atol=1e-5)
    assert PrototypeSelector(m, 4).reduce == "score"
    assert PrototypeSelector(m, 4, reduce="max").reduce == "score"
    multi = PrototypeSelector(m, [1, 4], reduce="score")
    assert multi(x).shape == (2, 2) and torch.allclose(multi(x)[:, 1], s_score(x))
    assert multi.single(1).indices == [4]


def test_prototype_out_of_range_names_the_range(architecture):
    m = tiny_model(architecture)
    for bad in (6, -1):
        with pytest.raises(UserError, match=r"out of range: this model has prototypes 0\.\.5"):
            PrototypeSelector(m, bad)
    with pytest.raises(UserError, match="reduce"):
        PrototypeSelector(m, 0, reduce="mean")


def test_prototype_selector_refuses_a_plain_classifier():
    with pytest.raises(UserError, match="missing: prototype_similarity_maps"):
        PrototypeSelector(torch.nn.Linear(2, 2), 0)


def test_logit_selector_on_a_torchvision_classifier():
    net = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    sel = LogitSelector(net, 3)
    with torch.no_grad():
        assert torch.allclose(sel(x), net(x)[:, 3])
    with pytest.raises(UserError, match=r"class index 5 out of range: this model has classes 0\.\.4"):
        LogitSelector(net, 5)


def test_logit_selector_on_a_model_returning_a_tuple():
    class Two(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3], "extra"

    sel = LogitSelector(Two(), 2)  # number of classes unknown up front: checked at the first call
    x = torch.randn(4, 1, 2, 2)
    assert torch.equal(sel(x), x.flatten(1)[:, 2])
    with pytest.raises(UserError, match=r"classes 0\.\.2"):
        LogitSelector(Two(), 7)(x)
