"""RISE and extremal perturbation (the MDM paper's closest relatives) and the perturbation object they share with
MDM and the faithfulness metrics."""

import numpy as np
import pytest
import torch
from oracles import BoxOracle, oracle_image

from protomdm import LogitSelector
from protomdm.errors import UserError
from protomdm.evaluation.metrics import box_mask, iou
from protomdm.explain import ExtremalLocalizer, Perturbation, RISELocalizer, create_localizer
from protomdm.explain.extremal import SmoothMask, area_profile
from protomdm.explain.rise import rise_masks

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
    """One area of 5% (of the mask with its margin: 281 pixels, about 7% of the image, 70% of the box), at settings
    sized for a 64-pixel image (TorchRay's 224-pixel blob, sigma 21, cannot make a mask this small): the kept part
    lies inside the box."""
    small = ExtremalLocalizer(areas=(0.05,), steps=300, stride=2, sigma=6.0, blur_sigma=6.0, reference_size=None)
    loc = small.localize(oracle_image(), LogitSelector(BoxOracle(BOX), 0))
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


def test_smooth_mask_is_torchrays_smooth_max():
    """One cell on: ``m = w e^(20 w) / (e^(20 w) + K - 1)`` with the flat-topped ``w = exp(-2 max(d / sigma - 1/2,
    0)^2)`` (the window's other K - 1 cells are 0); two cells on: the larger of their bumps, not their sum."""
    sm = SmoothMask((20, 20), stride=2, sigma=3.0)
    assert sm.grid == (10, 10) and sm.full == (23, 23) and sm.crop == 3
    p = torch.zeros(1, 1, *sm.grid)
    p[0, 0, 5, 4] = 1.0  # the cell centred on pixel (10, 8)
    m, full = sm(p)
    assert m.shape == (1, 20, 20) and full.shape == (1, 23, 23)
    torch.testing.assert_close(full[:, 3:23, 3:23], m)
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    d = ((yy - 10) ** 2 + (xx - 8) ** 2).sqrt()
    w = torch.exp(-2 * (d / 3 - 0.5).clamp(min=0) ** 2)
    k = (2 * sm.radius + 1) ** 2
    expected = w * torch.exp(20 * w) / (torch.exp(20 * w) + k - 1)
    near = d <= 3  # inside every window that holds the cell
    torch.testing.assert_close(m[0][near], expected[near], atol=1e-6, rtol=1e-5)
    assert float(m[0, 10, 8]) > 0.999 and float(m[0, 10, 9]) > 0.999  # flat top within sigma / 2
    assert float(m[0][d > 2 * sm.radius * 2].max()) == 0.0  # beyond every window that holds the cell
    p[0, 0, 5, 6] = 0.5  # a second, weaker cell at pixel (10, 12)
    both = sm(p)[0][0]
    assert float(both[10, 8]) == pytest.approx(float(m[0, 10, 8]), abs=1e-6)
    assert float(both.max()) <= 1.0 and 0.45 < float(both[10, 12]) <= 0.5 + 1e-6


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


def test_blend_is_apply_and_its_gradient_to_the_mask_is_autograds():
    """MDM's blend (``b + m * (x - b)``, differentiated to the mask by hand) equals ``m * x + (1 - m) * b`` and its
    gradient, for a gathered batch, for one image's rows as views, channels-last, one channel, and with broadcast
    masks (autograd's path)."""
    g = torch.Generator().manual_seed(0)
    x, b = torch.rand(3, 3, 6, 6, generator=g), torch.rand(3, 3, 6, 6, generator=g)
    w = torch.rand(5, 3, 6, 6, generator=g)  # weights of a linear "model" of the masked images
    img = torch.tensor([0, 2, 2, 1, 0])
    last = [t.contiguous(memory_format=torch.channels_last) for t in (x, b)]
    for xs, bs in ((x[img], b[img]), (x[:1].expand(5, -1, -1, -1), b[:1].expand(5, -1, -1, -1)),
                   (last[0][:1].expand(5, -1, -1, -1), last[1][:1].expand(5, -1, -1, -1)), (x[img, :1], b[img, :1])):
        w = w[:, :xs.shape[1]]
        m1 = torch.rand(5, 6, 6, generator=g).requires_grad_()
        m2 = m1.detach().clone().requires_grad_()
        fast = Perturbation.blend(m1, bs, xs - bs)
        plain = m2[:, None] * xs + (1 - m2[:, None]) * bs
        assert torch.allclose(fast, plain, atol=1e-6)
        (g1,), (g2,) = torch.autograd.grad((fast * w).sum(), m1), torch.autograd.grad((plain * w).sum(), m2)
        assert g1.shape == m1.shape and torch.allclose(g1, g2, atol=1e-5)
    m = torch.rand(1, 5, 1, 6, 6, generator=g, requires_grad=True)  # RISE's broadcast shapes
    (gm,) = torch.autograd.grad(Perturbation.apply(x[:, None], m, b[:, None]).sum(), m)
    assert torch.allclose(gm, (x - b)[:, None].sum((0, 2), keepdim=True).expand_as(m), atol=1e-5)


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


def test_smooth_mask_equals_its_definition_pixel_by_pixel():
    """The batched smooth max against its definition, one pixel at a time: the window of pixel ``u`` (margin
    coordinates) is the ``(2r + 1)^2`` cells from ``floor(u / stride) - pad + r`` outwards (cells off the grid are 0),
    cell ``i`` centred at ``sigma + stride i``."""
    sm = SmoothMask((13, 11), stride=3, sigma=2.5)
    p = torch.rand(2, 1, *sm.grid, generator=torch.Generator().manual_seed(0))
    full = sm(p)[1]
    r, k = sm.radius, torch.arange(-sm.radius, sm.radius + 1)
    for uy in range(sm.full[0]):
        for ux in range(sm.full[1]):
            iy, ix = uy // 3 - sm.pad + r + k, ux // 3 - sm.pad + r + k
            d = ((uy - 2.5 - 3 * iy[:, None]) ** 2 + (ux - 2.5 - 3 * ix[None, :]) ** 2).float().sqrt()
            inside = ((iy >= 0) & (iy < sm.grid[0]))[:, None] & ((ix >= 0) & (ix < sm.grid[1]))[None, :]
            q = torch.zeros(2, 2 * r + 1, 2 * r + 1)
            q[:, inside] = p[:, 0][:, iy.clamp(0, sm.grid[0] - 1)][:, :, ix.clamp(0, sm.grid[1] - 1)][:, inside]
            v = (torch.exp(-2 * (d / 2.5 - 0.5).clamp(min=0) ** 2) * q).flatten(1)
            expected = (v * torch.softmax(20 * v, 1)).sum(1).clamp(0, 1)
            torch.testing.assert_close(full[:, uy, ux], expected, atol=1e-6, rtol=1e-5)


def test_extremal_searches_in_chunks_as_in_one(monkeypatch):
    """Pairs split over several searches (a small memory budget) give the maps of one search."""
    import protomdm.explain.extremal as ext

    model = BoxOracle(BOX, num_classes=2)
    x = torch.cat([oracle_image(seed=1), oracle_image(seed=2)])
    loc = ExtremalLocalizer(steps=20, areas=(0.1,))
    pairs = [(0, 0), (1, 1), (1, 0)]
    one = loc.localize_pairs(x, LogitSelector(model, [0, 1]), pairs)
    monkeypatch.setattr(ext, "MAX_ELEMENTS", 1)  # one pair per search
    chunked = loc.localize_pairs(x, LogitSelector(model, [0, 1]), pairs)
    for a, b in zip(one, chunked):
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-5)
