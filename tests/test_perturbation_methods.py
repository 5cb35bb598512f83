"""RISE and extremal perturbation (the MDM paper's closest relatives) and the perturbation object they share with
MDM and the faithfulness metrics."""

import numpy as np
import pytest
import torch

from protomdm import LogitSelector
from protomdm.errors import UserError
from protomdm.evaluation.metrics import box_mask, iou
from protomdm.explain import ExtremalLocalizer, Perturbation, RISELocalizer, create_localizer
from protomdm.explain.extremal import SmoothMask, area_profile
from protomdm.explain.rise import rise_masks

from oracles import BoxOracle, oracle_image

BOX = (36, 8, 56, 28)
ELSEWHERE = (4, 36, 24, 56)


def _finds_the_box(loc, percentile=90):
    mask = loc.binary(percentile)
    assert loc.ok and iou(mask, box_mask(BOX, (64, 64))) >= 0.5, loc.box(percentile)
    assert iou(mask, box_mask(ELSEWHERE, (64, 64))) == 0.0


def test_rise_finds_the_oracle_box():
    loc = RISELocalizer(masks=1500).localize(oracle_image(), LogitSelector(BoxOracle(BOX), 0))
    _finds_the_box(loc)
    assert loc.method == "rise" and loc.settings["masks"] == 1500 and loc.heatmap.max() == pytest.approx(1.0)


def test_extremal_perturbation_finds_the_oracle_box():
    loc = ExtremalLocalizer(steps=400).localize(oracle_image(), LogitSelector(BoxOracle(BOX), 0))
    _finds_the_box(loc)
    assert loc.method == "extremal" and loc.steps == 400


def test_extremal_small_area_mask_lies_in_the_box():
    """One area of 5% (205 pixels, half the box): the mask's kept half lies inside the box."""
    loc = ExtremalLocalizer(areas=(0.05,), steps=300).localize(oracle_image(), LogitSelector(BoxOracle(BOX), 0))
    kept = loc.heatmap > 0.5
    assert 0.03 * 64 * 64 <= kept.sum() <= 0.08 * 64 * 64
    assert (kept & box_mask(BOX, (64, 64))).sum() >= 0.9 * kept.sum()


def test_a_batch_of_images_and_targets_equals_one_at_a_time():
    model = BoxOracle(BOX, num_classes=2)
    x = torch.cat([oracle_image(seed=1), oracle_image(seed=2)])
    rise = RISELocalizer(masks=200, batch=64)
    both = rise.localize_many(x, LogitSelector(model, [0, 1]))
    alone = rise.localize_many(x[1:], LogitSelector(model, 1))
    np.testing.assert_allclose(both[1][1].heatmap, alone[0][0].heatmap, atol=1e-5)


def test_rise_masks_are_smooth_shifted_and_keep_p():
    m = rise_masks(2000, (64, 48), cells=7, p_keep=0.3, generator=torch.Generator().manual_seed(0))
    assert m.shape == (2000, 64, 48) and m.min() >= 0 and m.max() <= 1
    assert abs(float(m.mean()) - 0.3) < 0.02  # each pixel is kept with probability p on average
    assert len(torch.unique(m[0])) > 2  # bilinear, not binary
    assert not torch.equal(m[0], m[1])


def test_smooth_mask_is_a_gaussian_max_convolution():
    sm = SmoothMask((20, 20), stride=2, sigma=3.0)
    p = torch.zeros(1, 1, *sm.grid)
    p[0, 0, 5, 4] = 1.0  # the grid point at pixel (10, 8)
    m = sm(p)[0]
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    expected = torch.exp(-((yy - 10) ** 2 + (xx - 8) ** 2) / (2 * 9.0))
    # (the kernel reaches 3 sigma = 5 cells around each pixel's cell: all of this small image)
    torch.testing.assert_close(m, expected, atol=1e-6, rtol=1e-5)
    p[0, 0, 5, 6] = 0.5  # a second, weaker point: the max, not the sum, of the two bumps
    both = sm(p)[0]
    assert torch.all(both >= m - 1e-7) and float(both.max()) == pytest.approx(1.0)


def test_area_profile():
    assert area_profile(10, 0.3).tolist() == [0.0] * 7 + [1.0] * 3


def test_perturbation_applies_masks_with_each_baseline():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    m = torch.zeros(2, 4, 4)
    m[:, :2] = 1
    for kind in ("zero", "mean", "blur"):
        pert = Perturbation(kind, blur_sigma=1.0)
        b = pert.baseline(x)
        out = pert.apply(x, m, b)
        assert torch.equal(out[:, :, :2], x[:, :, :2]) and torch.allclose(out[:, :, 2:], b[:, :, 2:])
    assert torch.equal(Perturbation.apply(x, m.bool(), torch.zeros_like(x)), x * m[:, None])
    with pytest.raises(UserError, match="unknown baseline 'noise'"):
        Perturbation("noise")


def test_settings_reach_the_methods_by_name_and_bad_ones_are_refused():
    assert create_localizer("rise", masks=10).config.masks == 10
    assert create_localizer("extremal", areas=[0.2]).config.areas == (0.2,)
    with pytest.raises(UserError, match="unknown RISE setting"):
        create_localizer("rise", steps=3)
    with pytest.raises(UserError, match="p_keep"):
        create_localizer("rise", p_keep=1.5)
    with pytest.raises(UserError, match="areas"):
        create_localizer("extremal", areas=(0.0,))


def test_an_image_independent_target_is_empty():
    class Constant(torch.nn.Module):
        num_classes = 1

        def forward(self, x):
            return x.sum((1, 2, 3))[:, None] * 0 + 3.0

    for loc in (RISELocalizer(masks=20).localize(oracle_image(), LogitSelector(Constant(), 0)),
                ExtremalLocalizer(steps=2).localize(oracle_image(), LogitSelector(Constant(), 0))):
        assert loc.status == "empty" and "does not depend on the image" in loc.reason and loc.box() is None


def test_smooth_mask_equals_the_max_over_every_grid_point():
    """The separable max-convolution against its definition, computed point by point."""
    sm = SmoothMask((13, 11), stride=3, sigma=2.5)
    p = torch.rand(2, 1, *sm.grid, generator=torch.Generator().manual_seed(0))
    gy, gx = torch.meshgrid(torch.arange(sm.grid[0]) * 3.0, torch.arange(sm.grid[1]) * 3.0, indexing="ij")
    yy, xx = torch.meshgrid(torch.arange(13.0), torch.arange(11.0), indexing="ij")
    d2 = (yy[..., None, None] - gy) ** 2 + (xx[..., None, None] - gx) ** 2  # (H, W, g_h, g_w)
    cell = lambda u, g: (g / 3 - (u // 3)[..., None, None]).abs() <= sm.radius  # noqa: E731  (the kernel's reach)
    near = cell(yy, gy) & cell(xx, gx)
    expected = (torch.exp(-d2 / (2 * 2.5**2)) * near * p[:, 0, None, None]).flatten(3).amax(3)
    torch.testing.assert_close(sm(p), expected, atol=1e-6, rtol=1e-5)
