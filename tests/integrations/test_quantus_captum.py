"""protomdm's metrics against Quantus's on the same heatmaps, and its localizers called as Quantus and Captum call
a method."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")
captum_attr = pytest.importorskip("captum.attr")

from conftest import tiny_model  # noqa: E402
from oracles import BoxOracle  # noqa: E402

from protomdm.evaluation.faithfulness import deletion_insertion  # noqa: E402
from protomdm.evaluation.metrics import pointing_game, ppv  # noqa: E402
from protomdm.evaluation.randomisation import parameter_randomisation  # noqa: E402
from protomdm.explain import LogitSelector  # noqa: E402
from protomdm.geometry import top_percentile_mask  # noqa: E402
from protomdm.integrations.captum import MDM, LocalizerAttribution  # noqa: E402
from protomdm.integrations.quantus import explain_func  # noqa: E402

SIZE, BOX = 40, (8, 16, 24, 32)
warnings.filterwarnings("ignore", module="quantus")


@pytest.fixture(scope="module")
def batch():
    """Four images of the box oracle, their truth masks and saliency heatmaps from protomdm's Quantus function."""
    model = BoxOracle(BOX, size=SIZE).eval()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 3, SIZE, SIZE, generator=g) * 2 - 1).numpy()
    y = np.array([0, 1, 0, 1])
    s = np.zeros((4, 1, SIZE, SIZE), np.float32)
    x0, y0, x1, y1 = BOX
    s[:, :, y0:y1 - 8, x0:x1] = 1  # the truth covers half the evidence: not every method hits it
    a = explain_func(model, x, y, method="smoothgrad", blur_sigma=8)
    return model, x, y, s, a


def test_explain_func_keeps_quantus_contract(batch):
    model, x, y, _, a = batch
    assert a.shape == (4, 1, SIZE, SIZE) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    loc = LogitSelector(model, 1)
    again = explain_func(model, torch.as_tensor(x[1:2]), 1, method="smoothgrad", blur_sigma=8, device="cpu")
    assert np.allclose(again[0], a[1], atol=1e-6) and loc.num_targets == 1


def test_pointing_game_agrees_with_quantus(batch):
    model, x, y, s, a = batch
    theirs = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True)(
        model, x, y, a_batch=a, s_batch=s, device="cpu")
    ours = [pointing_game(a[i, 0], s[i, 0]) for i in range(4)]
    assert [bool(t) for t in theirs] == ours and 0 < sum(ours) < 4 or sum(ours) in (0, 4)
    # The one definitional difference: on tied maxima Quantus hits if any of them lies in the truth, protomdm
    # (as Zhang et al. and CheXlocalize) takes the first in raster order.
    tied = np.zeros((1, 1, SIZE, SIZE), np.float32)
    tied[0, 0, 0, 0] = tied[0, 0, 20, 10] = 1
    assert quantus.PointingGame(normalise=False, disable_warnings=True)(model, x[:1], y[:1], a_batch=tied,
                                                                          s_batch=s[:1], device="cpu") == [True]
    assert not pointing_game(tied[0, 0], s[0, 0])


def test_top_k_intersection_is_the_ppv_of_the_top_percentile_mask(batch):
    model, x, y, s, a = batch
    k = SIZE * SIZE // 10  # the top 10%: protomdm's p90 mask
    theirs = quantus.TopKIntersection(k=k, normalise=False, disable_warnings=True)(
        model, x, y, a_batch=a, s_batch=s, device="cpu")
    for i in range(4):
        mask = top_percentile_mask(a[i, 0], 90)
        assert mask.sum() == k  # no ties at the threshold in these maps
        assert ppv(mask, s[i, 0].astype(bool)) == pytest.approx(theirs[i], abs=1e-9)


def test_deletion_curve_is_quantus_region_perturbation(batch):
    """With a heatmap constant on 8x8 patches (distinct values), ranking pixels (protomdm) and ranking patches by
    their attribution sum (Quantus) delete the same pixels: the curves agree. Quantus reports the drop
    ``f(x) - f(x_k)``, protomdm the score ``f(x_k)``."""
    model, x, y, _, a = batch
    patches = torch.nn.functional.avg_pool2d(torch.as_tensor(a), 8)  # (4, 1, 5, 5)
    patches = patches + torch.arange(25).view(1, 1, 5, 5) * 1e-4  # distinct patch values
    blocky = torch.nn.functional.interpolate(patches, scale_factor=8, mode="nearest").numpy()
    theirs = np.asarray(quantus.RegionPerturbation(patch_size=8, regions_evaluation=25, normalise=False,
                                                   perturb_baseline=0.0, disable_warnings=True)(
        model, x, y, a_batch=blocky, device="cpu", softmax=False))
    score = lambda t: model(t)[:, int(y[i])]  # noqa: E731
    for i in range(4):
        deletion, _ = deletion_insertion(score, torch.as_tensor(x[i]), blocky[i, 0], steps=25)
        assert np.allclose(deletion[0] - deletion[1:], theirs[i], atol=1e-5)


def test_model_parameter_randomisation_agrees_with_quantus():
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(2, 3, 48, 48, generator=g) * 2 - 1).numpy(), np.array([0, 2])
    kwargs = {"method": "saliency", "blur_sigma": 0}
    theirs = quantus.MPRT(layer_order="top_down", seed=42, abs=False, normalise=False, disable_warnings=True)(
        model, x, y, explain_func=explain_func, explain_func_kwargs=kwargs, device="cpu")
    ours = parameter_randomisation(model, lambda m: explain_func(m, x, y, **kwargs)[:, 0], "top_down", 42)
    # the same layers, top first; Quantus also lists the unchanged model ("original": the explanation against itself)
    assert ["original", *ours] == list(theirs) and np.allclose(theirs["original"], 1)
    for layer, values in ours.items():
        assert np.allclose(values, theirs[layer], atol=1e-6), layer
    assert np.nanmean(list(ours.values())[-1]) < 0.5  # all layers random: the explanation has changed


def test_mdm_is_called_as_captum_calls_occlusion():
    model = BoxOracle(BOX, size=SIZE).eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    occlusion = captum_attr.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(3, 8, 8), strides=4)
    ours = MDM(model).attribute(x, target=1, steps=60, sizes=(4, 8), gamma=0.5)
    assert ours.shape == occlusion.shape == x.shape and torch.equal(ours[:, 0], ours[:, 2])
    x0, y0, x1, y1 = BOX
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    for heat in ours[:, 0]:  # the masks keep the box, where the oracle's evidence is
        assert heat[inside].mean() > heat[~inside].mean() + 0.1
    rise = LocalizerAttribution(lambda t: model(t), method="rise")  # a plain function, one target per image
    per_image = rise.attribute(x, target=[0, 1], masks=200)
    assert per_image.shape == x.shape and [loc.method for loc in rise.localizations] == ["rise", "rise"]
    assert [loc.settings["selector"]["indices"] for loc in rise.localizations] == [[0], [1]]
