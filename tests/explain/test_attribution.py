"""Saliency, SmoothGrad (Captum) and PRP (zennit) as localizers: their evidence where an oracle put it, PRP's
relevance conserved, CaBRNet's post-processing, batched pairs equal to one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("captum")
pytest.importorskip("zennit")

from conftest import tiny_model  # noqa: E402
from oracles import BoxOracle, oracle_image  # noqa: E402

from protomdm.errors import UserError  # noqa: E402
from protomdm.explain import LogitSelector, PrototypeSelector, create_localizer  # noqa: E402
from protomdm.explain.attribution import AttributionConfig, attribution_heatmaps  # noqa: E402
from protomdm.explain.prp import PRPLocalizer  # noqa: E402
from protomdm.models.protopnet import receptive_field_box  # noqa: E402

BOX = (20, 12, 36, 30)


def inside(heat: np.ndarray, box) -> float:
    x0, y0, x1, y1 = box
    return float(heat[y0:y1, x0:x1].sum() / heat.sum())


@pytest.mark.parametrize("method", ["saliency", "smoothgrad"])
def test_gradient_methods_find_the_oracles_box(method):
    # the logit reads the pixels in the box through a 3x3 conv: no gradient can reach a pixel more than one away
    loc = create_localizer(method, blur_sigma=0).localize(oracle_image(), LogitSelector(BoxOracle(BOX), 0))
    x0, y0, x1, y1 = BOX
    assert loc.ok and inside(loc.heatmap, (x0 - 1, y0 - 1, x1 + 1, y1 + 1)) == pytest.approx(1.0)
    assert loc.box(90) is not None


def pushed_model(size: int = 96, cell=(6, 4)):
    """A tiny ProtoPNet without biases whose prototype 0 is near the latent vector at ``cell`` of image ``x`` (not on
    it: at distance 0 the similarity's gradient vanishes): its most similar location is that cell, so its evidence
    lies in that cell's receptive field."""
    model = tiny_model(img_size=(size, size))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.zero_()
        x = oracle_image(size, seed=3)
        z = model.conv_features(x)[0, :, cell[0], cell[1], None, None]
        model.prototype_vectors[0] = z + 0.002 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
        d = model.distances(model.conv_features(x), [0])[0, 0]
        assert int(d.argmin()) == cell[0] * d.shape[1] + cell[1]
    return model, x, receptive_field_box(model, x, cell)


@pytest.mark.parametrize("method", ["prp", "saliency"])  # SmoothGrad: see the box oracle (here, with random
def test_prototype_evidence_lies_in_the_pushed_cells_receptive_field(method):  # weights, noise moves the best cell)
    model, x, rf = pushed_model()
    loc = create_localizer(method, blur_sigma=0).localize(x, PrototypeSelector(model, 0))
    area = (rf[2] - rf[0]) * (rf[3] - rf[1]) / 96 ** 2
    assert loc.ok and area < 0.2
    assert inside(loc.heatmap, rf) == pytest.approx(1.0)  # neither gradient nor relevance can leave it


def test_prp_conserves_relevance_and_shares_it_among_channels_by_distance():
    model, x, _ = pushed_model()
    j = 0
    prp = PRPLocalizer()
    attr = prp.attribute(x, PrototypeSelector(model, j), [0])  # (1, C, H, W), before post-processing
    with torch.no_grad():
        score = float(model.prototype_scores(x, [j])[0, 0])
    # no biases: the pixels' relevances sum to the explained similarity (z+ and z-box conserve it)
    assert float(attr.sum()) == pytest.approx(score, rel=1e-3)
    whole = prp.attribute(x, PrototypeSelector(model, j, reduce="map"), [0])
    with torch.no_grad():
        total = float(model.prototype_similarity_maps(x, [j]).sum())
    assert float(whole.sum()) == pytest.approx(total, rel=1e-3)


def test_prp_refuses_a_network_without_an_l2_prototype_layer():
    with pytest.raises(UserError, match="PRP needs a ProtoPNet-style"):
        create_localizer("prp").localize(torch.rand(1, 1, 48, 48), PrototypeSelector(tiny_model("xprotonet",
                                                                                                  in_channels=1,
                                                                                                  mean=(0.5,),
                                                                                                  std=(0.25,)), 0))


def test_pairs_in_one_batch_equal_one_at_a_time():
    model = tiny_model()
    x = torch.randn(3, 3, 48, 48)
    sel = PrototypeSelector(model, [1, 4])
    pairs = [(2, 1), (0, 0), (1, 1)]
    for method in ("saliency", "prp"):
        loc = create_localizer(method, batch=2)
        together = loc.localize(x, sel, pairs)
        for (b, k), got in zip(pairs, together):
            alone = loc.localize(x[b], sel.single(k))
            assert np.allclose(got.heatmap, alone.heatmap, atol=1e-5) and got.score == pytest.approx(alone.score, rel=1e-5)


def test_post_processing_is_cabrnets_polarity_channel_mean_and_blur():
    attr = torch.zeros(1, 3, 33, 33)
    attr[0, 0, 16, 16], attr[0, 1, 16, 16] = -3.0, 1.5  # signed values in two channels at one pixel
    raw = attribution_heatmaps(attr, AttributionConfig(blur_sigma=0))
    assert raw[0, 16, 16] == pytest.approx(1.5) and raw.sum() == pytest.approx(1.5)  # mean over 3 channels of |a|
    pos = attribution_heatmaps(attr, AttributionConfig(polarity="positive", blur_sigma=0))
    assert pos[0, 16, 16] == pytest.approx(0.5)
    blurred = attribution_heatmaps(attr, AttributionConfig(blur_sigma=2, reference_size=None))
    assert blurred.sum() == pytest.approx(1.5, rel=1e-3) and blurred[0, 16, 16] < 0.1  # spread, mass kept
    assert blurred[0, 16, 18] == pytest.approx(blurred[0, 18, 16]) and blurred[0, 16, 18] > blurred[0, 16, 22]
