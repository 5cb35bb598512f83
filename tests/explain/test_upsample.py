import numpy as np
import pytest
import torch
from conftest import tiny_model

from protomdm import LogitSelector, PrototypeSelector, UpsampleLocalizer
from protomdm.errors import UserError


def find_high_activation_crop(activation_map: np.ndarray, percentile: float = 95):
    """ProtoPNet's own box rule, written out: rows/cols holding any pixel >= the percentile threshold."""
    threshold = np.percentile(activation_map, percentile)
    mask = activation_map >= threshold
    rows = [i for i in range(mask.shape[0]) if mask[i].any()]
    cols = [j for j in range(mask.shape[1]) if mask[:, j].any()]
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def test_upsampled_prototype_peak_is_where_the_prototype_was_taken():
    m = tiny_model("protopnet")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = m.conv_features(x)  # (1, 16, 6, 6); each latent cell covers 8x8 input pixels
        m.prototype_vectors[2] = z[0, :, 2, 4, None, None]
    loc = UpsampleLocalizer().localize(x, PrototypeSelector(m, 2))
    assert loc.method == "upsample" and loc.heatmap.shape == (48, 48)
    assert loc.heatmap.max() == pytest.approx(1.0) and loc.heatmap.min() == pytest.approx(0.0)
    y, xx = np.unravel_index(loc.heatmap.argmax(), loc.heatmap.shape)
    assert 12 <= y < 28 and 28 <= xx < 44  # within the cell (rows 16-23, cols 32-39), give or take bicubic spread
    x0, y0, x1, y1 = loc.box(95)
    assert x0 <= 40 and x1 >= 32 and y0 <= 24 and y1 >= 16
    # the box is the one ProtoPNet's find_high_activation_crop draws on the same map
    assert loc.box(95) == find_high_activation_crop(loc.heatmap, 95)


def test_xprotonet_upsamples_its_occurrence_map():
    m = tiny_model("xprotonet")
    x = torch.randn(1, 3, 48, 48)
    loc = UpsampleLocalizer(mode="nearest").localize(x, PrototypeSelector(m, 1))
    occ = m.localization_maps(x, 1)[0, 0].detach().numpy()
    expect = np.kron(occ, np.ones((8, 8)))
    expect = (expect - expect.min()) / (expect.max() - expect.min())
    assert np.allclose(loc.heatmap, expect, atol=1e-5)


def test_upsample_needs_a_prototype_selector():
    m = tiny_model("protopnet")
    with pytest.raises(UserError, match="prototype selector"):
        UpsampleLocalizer().localize(torch.zeros(1, 3, 48, 48), LogitSelector(m, 0))
