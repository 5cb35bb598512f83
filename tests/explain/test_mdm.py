import numpy as np
import pytest
import torch
from conftest import tiny_model
from oracles import BoxOracle, SoftMaxBoxOracle, oracle_image

from protomdm import LogitSelector, MDMConfig, MDMLocalizer, PrototypeSelector
from protomdm.errors import ConfigError, UserError
from protomdm.evaluation.metrics import box_mask, dice, iou, top_percentile_mask
from protomdm.explain.mdm import masks_to_heatmap
from protomdm.explain.perturbation import Perturbation, gaussian_blur

BOX = (36, 8, 56, 28)
ELSEWHERE = (4, 36, 24, 56)


@pytest.fixture(scope="module")
def oracle_localization():
    model = BoxOracle(BOX)
    return MDMLocalizer(steps=300).localize(oracle_image(), LogitSelector(model, 0))


def test_oracle_box_is_found(oracle_localization):
    mask = oracle_localization.binary(90)
    assert iou(mask, box_mask(BOX, (64, 64))) >= 0.5
    assert iou(mask, box_mask(ELSEWHERE, (64, 64))) == 0.0
    x0, y0, x1, y1 = oracle_localization.box(90)
    assert abs(x0 - BOX[0]) <= 3 and abs(y0 - BOX[1]) <= 3 and abs(x1 - BOX[2]) <= 3 and abs(y1 - BOX[3]) <= 3


def test_oracle_result_metadata(oracle_localization):
    loc = oracle_localization
    assert loc.method == "mdm" and loc.heatmap.shape == (64, 64) and loc.heatmap.dtype == np.float32
    assert loc.heatmap.min() >= 0 and loc.heatmap.max() == pytest.approx(1.0)
    assert loc.steps == 300 and loc.seconds > 0 and loc.device == "cpu"
    assert loc.settings["sizes"] == tuple(range(6, 33)) and loc.settings["lr"] == 3e-3
    # the loss's kind among the settings, the loss reached beside it
    assert loc.settings["loss"] == "normalised" and loc.settings["final_loss"] == pytest.approx(
        loc.settings["final_loss_reconstruction"] + loc.settings["final_loss_area"], rel=1e-4)


def test_default_settings_are_the_papers():
    cfg = MDMConfig()
    assert cfg.sizes == tuple(5 + i for i in range(1, 28)) and len(cfg.sizes) == 27
    assert (cfg.init, cfg.lr, cfg.gamma, cfg.baseline) == (0.5, 3e-3, 5.0, "zero")
    # the paper's 2000-step schedule in 300 passes, every Adam step taken between them (scripts/schedule_study.py);
    # the area weight chosen against ground truth (scripts/mdm_study.py), the normalised loss
    assert (cfg.lambda_l1, cfg.loss) == (3.0, "normalised")
    assert (cfg.steps, cfg.adam_steps, cfg.horizon, cfg.between_passes) == (2000, 300, 300, "linear")
    assert cfg.step_scale == pytest.approx(2000 / 300) and (cfg.schedule_at(1), cfg.schedule_at(300)) == (7, 2000)
    assert (cfg.time_scale, cfg.extrapolate_after, cfg.tol) == (None, None, None)
    # fewer schedule steps than adam_steps: one Adam step each; the full schedule: every one of 2000
    assert (MDMConfig(steps=120).horizon, MDMConfig(steps=120).step_scale) == (120, 1.0)
    assert (cfg.full_schedule().horizon, cfg.full_schedule().step_scale) == (2000, 1.0)


def test_heatmap_rule_by_hand():
    masks = np.zeros((3, 2, 2), dtype=np.float32)
    masks[:, 0, 0] = [1.0, 1.0, 1.0]  # sum 3
    masks[:, 0, 1] = [1.0, 0.5, 0.0]  # sum 1.5  < gamma 2 -> 0
    masks[:, 1, 0] = [1.0, 1.0, 0.0]  # sum 2 (not below gamma)
    h = masks_to_heatmap(masks, gamma=2.0)
    assert np.allclose(h, [[1.0, 0.0], [2 / 3, 0.0]])
    assert np.all(masks_to_heatmap(np.zeros((3, 2, 2)), 1.0) == 0)


def test_batched_equals_one_mask_at_a_time():
    model = tiny_model("protopnet", seed=1, img_size=(32, 32))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loc = MDMLocalizer(sizes=(3, 5, 8), steps=25, gamma=0.0, lambda_l1=0.5)
    sel = PrototypeSelector(model, prototype=3)
    batched = loc.fit_masks(x, sel)
    seq = loc.localize_sequential(x, sel)
    assert batched.masks.shape == (1, 3, 32, 32)
    assert np.allclose(masks_to_heatmap(batched.masks[0], 0.0), seq.heatmap, atol=1e-4)
    # the masks did move away from their start, so the comparison means something
    assert (batched.masks - 0.5).abs().max() > 0.02
    # each mask's final loss terms, the same from both engines; the settings give their means over the masks
    seq_fit = loc.fit_sequential(x, sel, [(0, 0)])
    assert torch.allclose(batched.reconstruction, seq_fit.reconstruction, rtol=1e-3, atol=1e-6)
    assert torch.allclose(batched.area, seq_fit.area, rtol=1e-4)
    assert seq.settings["final_loss"] == pytest.approx(float((seq_fit.reconstruction + seq_fit.area).mean()), rel=1e-5)
    # by hand, the normalised loss of the 5x5 mask: ||f(X) - f(MX)||^2 / ||f(X) - f(0)||^2 + 0.5 mean|d|
    with torch.no_grad():
        f_x, f_0, f_m = sel.targets(torch.cat([x, 0 * x, x * batched.masks[0, 1]]))[:, 0]
    # (rel 1e-3: the search runs the model with BatchNorm folded and channels-last, which rounds differently)
    assert float(batched.reconstruction[0, 1]) == pytest.approx(float((f_x - f_m) ** 2 / (f_x - f_0) ** 2), rel=1e-3)
    assert float(batched.area[0, 1]) > 0 and float(batched.reconstruction[0, 1]) > 0


class _OneLogitConstant(torch.nn.Module):
    """A :class:`BoxOracle`'s first logit beside a constant one, which masking cannot change."""

    def __init__(self) -> None:
        super().__init__()
        self.oracle, self.num_classes = BoxOracle(BOX), 2

    def forward(self, x):
        return torch.stack([self.oracle(x)[:, 0], torch.full((len(x),), 0.7)], 1)


def test_a_task_training_beside_an_untrained_one_is_its_own_search():
    """A search where only some tasks train (here the constant logit's task is never trained) passes and updates
    just those tasks' masks, gathered and scattered by index; they end as the same task's search alone, where every
    mask trains and nothing is gathered."""
    model = _OneLogitConstant()
    loc = MDMLocalizer(sizes=(4, 6, 8), steps=40, gamma=0.0)
    both = loc.fit_masks(oracle_image(), LogitSelector(model, [1, 0]))
    alone = loc.fit_masks(oracle_image(), LogitSelector(model, 0))
    assert both.independent.tolist() == [True, False] and int(both.steps[0].sum()) == 0
    torch.testing.assert_close(both.masks[1], alone.masks[0], atol=1e-5, rtol=0)
    assert (alone.masks - 0.5).abs().max() > 0.05  # the masks moved


def test_localize_many_equals_separate_runs():
    model = tiny_model("protopnet", seed=1, img_size=(32, 32))
    xs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    loc = MDMLocalizer(sizes=(4, 6), steps=15, gamma=0.0)
    many = loc.localize_many(xs, PrototypeSelector(model, prototype=[0, 5]))
    assert len(many) == 2 and len(many[0]) == 2
    for b in range(2):
        for k, j in enumerate([0, 5]):
            alone = loc.localize(xs[b], PrototypeSelector(model, prototype=j))
            assert np.allclose(many[b][k].heatmap, alone.heatmap, atol=1e-4)
            assert many[b][k].settings["selector"]["indices"] == [j]


CUDA_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")  # torch's own


class _OOMAbove:
    """Wraps a selector and raises an out-of-memory error (default CUDA's) for batches larger than ``limit``."""

    def __init__(self, selector, limit, error=CUDA_OOM):
        self.inner, self.limit, self.batches, self.error = selector, limit, [], error
        self.model, self.indices, self.num_targets = selector.model, selector.indices, selector.num_targets

    def targets(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.error
        return self.inner.targets(x)

    def single(self, k):
        return self.inner.single(k)


@pytest.mark.parametrize("error", [CUDA_OOM, CPU_OOM], ids=["cuda", "cpu"])
def test_out_of_memory_halves_the_batch_and_goes_on(error):
    model = BoxOracle(BOX)
    x = oracle_image()
    ref = MDMLocalizer(sizes=(4, 6, 8, 10), steps=10, gamma=1).fit_masks(x, LogitSelector(model, 0))
    flaky = _OOMAbove(LogitSelector(model, 0), limit=2, error=error)
    fit = MDMLocalizer(sizes=(4, 6, 8, 10), steps=10, gamma=1).fit_masks(x, flaky)
    assert fit.batch_masks == 2
    assert max(flaky.batches[1:]) <= 4  # the unmasked pass (the image and its baseline), then 4 -> 2
    assert torch.allclose(fit.masks, ref.masks, atol=1e-5)


def test_out_of_memory_at_batch_one_is_a_clear_error():
    flaky = _OOMAbove(LogitSelector(BoxOracle(BOX), 0), limit=2)  # the first pass: the image and its baseline
    calls = flaky.targets
    flaky.targets = lambda x: calls(x) if not flaky.batches else (_ for _ in ()).throw(CUDA_OOM)
    with pytest.raises(UserError, match="out of memory even with one"):
        MDMLocalizer(sizes=(4, 6), steps=2, gamma=1).fit_masks(oracle_image(), flaky)


def test_images_per_search_on_a_gpu_is_what_half_its_free_memory_holds(monkeypatch):
    from protomdm.explain import mdm

    cuda, model = torch.device("cuda"), tiny_model()
    monkeypatch.setattr(mdm, "pass_bytes", lambda model, device, masks: masks * (100 << 20))  # 100 MiB a masked image
    free = {"bytes": 80 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 80 << 30))
    assert mdm.images_per_search(None, cuda, model) == 15  # 40 GiB / 2.7 GiB
    assert mdm.images_per_search(None, cuda, model, masks=10) == 40
    free["bytes"] = 1 << 30
    assert mdm.images_per_search(None, cuda, model) == 1  # not one image's worth: one (its passes halve their batch)
    free["bytes"] = 1 << 40
    assert mdm.images_per_search(None, cuda, model) == mdm.MAX_IMAGES_PER_SEARCH
    assert mdm.images_per_search(3, cuda, model) == 3
    assert mdm.images_per_search(None, torch.device("cpu"), model) == mdm.CPU_IMAGES == 4
    monkeypatch.setattr(mdm, "pass_bytes", lambda model, device, masks: None)  # not measurable
    assert mdm.images_per_search(None, cuda, model) == mdm.GPU_IMAGES == 8
    with pytest.raises(UserError, match="at least 1 image"):
        mdm.images_per_search(0, cuda, model)


def test_pass_bytes_is_measured_on_a_gpu_and_none_where_it_cannot_be():
    from protomdm.explain.mdm import pass_bytes

    cuda = torch.device("cuda")
    assert pass_bytes(BoxOracle(BOX), cuda) is None  # no input size to measure at
    model = tiny_model()
    if torch.cuda.is_available():
        small, large = pass_bytes(model.to(cuda), cuda, 4), pass_bytes(model, cuda, 16)
        assert small is not None and large is not None and 0 < small < large
    else:
        assert pass_bytes(model, cuda) is None  # no GPU: the default stands, nothing raised
    assert all(p.requires_grad for p in model.parameters())  # the model as it was


def test_a_search_reads_nothing_back_from_the_device_at_each_step():
    """Reading a value back (``bool``, ``int``, ``item``, ``nonzero``) waits for a GPU's queued work: a search reads at
    its start, its end and where tasks stop, not at every step, so the host runs ahead of the device."""
    import collections

    from torch.overrides import TorchFunctionMode

    class Reads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.count = collections.Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero"):
                self.count[name] += 1
            return func(*args, **(kwargs or {}))

    def reads(steps):
        with Reads() as r:
            MDMLocalizer(sizes=(4, 6), steps=steps, gamma=1).fit_masks(oracle_image(), LogitSelector(BoxOracle(BOX), 0))
        return r.count

    assert reads(20) == reads(60) and reads(20)["nonzero"] >= 1  # seen, and the same however long the schedule


def test_the_default_schedule_reaches_the_papers_on_an_oracle():
    """300 passes against 2000 (the paper's), on an oracle whose evidence lies in a known box and whose masks need
    the whole schedule (cut short at 300 steps they are far from it)."""
    box = (20, 20, 44, 44)
    sel = LogitSelector(SoftMaxBoxOracle(box), 0)
    full = MDMLocalizer(MDMConfig().full_schedule()).localize(oracle_image(), sel)
    ours = MDMLocalizer().localize(oracle_image(), sel)
    cut = MDMLocalizer(steps=300, time_scale=1.0).localize(oracle_image(), sel)
    assert (full.settings["passes"], ours.settings["passes"], cut.settings["passes"]) == (27 * 2000, 27 * 300,
                                                                                           27 * 300)
    assert dice(full.binary(90), cut.binary(90)) < 0.9  # the oracle tells a short schedule from the full one
    # so does the final loss, without the reference: the cut-short masks stop in a worse optimum, ours in the same
    assert cut.settings["final_loss"] > 1.3 * full.settings["final_loss"]
    assert ours.settings["final_loss"] == pytest.approx(full.settings["final_loss"], rel=0.01)
    assert dice(full.binary(90), ours.binary(90)) >= 0.95
    assert np.corrcoef(full.heatmap.ravel(), ours.heatmap.ravel())[0, 1] >= 0.97
    x0, y0, x1, y1 = box  # and the evidence is where the oracle reads: inside the box and its 1-pixel rim
    assert ours.binary(90)[y0 - 1:y1 + 1, x0 - 1:x1 + 1].sum() >= 0.9 * ours.binary(90).sum() > 0


def test_early_stopping_gives_the_full_result():
    sel = LogitSelector(BoxOracle(BOX), 0)
    full = MDMLocalizer(steps=600, time_scale=1.0).localize(oracle_image(), sel)
    early_fit = MDMLocalizer(steps=600, time_scale=1.0, tol=0.02, patience=25, min_steps=50).fit_masks(oracle_image(), sel)
    assert early_fit.steps.max() < 600  # the masks stopped early
    early = top_percentile_mask(masks_to_heatmap(early_fit.masks[0], 5.0), 90)
    assert dice(full.binary(90), early) >= 0.95


def test_extrapolated_schedule_reaches_the_full_one():
    sel = LogitSelector(BoxOracle(BOX), 0)
    full = MDMLocalizer(steps=500, time_scale=1.0).localize(oracle_image(), sel)
    short = MDMLocalizer(steps=500, time_scale=1.0, extrapolate_after=100).localize(oracle_image(), sel)
    cut = MDMLocalizer(steps=100, time_scale=1.0).localize(oracle_image(), sel)
    assert short.steps == cut.steps == 100 and short.settings["extrapolate_after"] == 100
    assert dice(full.binary(90), short.binary(90)) >= 0.95
    assert np.abs(full.heatmap - short.heatmap).mean() < np.abs(full.heatmap - cut.heatmap).mean()


def test_extrapolation_by_hand():
    from protomdm.explain.mdm import ADAM_BETAS

    b1, b2 = ADAM_BETAS
    t = torch.tensor(10.0)
    p = torch.tensor([0.5, 0.5, 0.9, 0.5])
    m = torch.tensor([1.0, -1.0, -1.0, 0.0]) * (1 - b1**t)  # bias-corrected mean: +1, -1, -1, 0
    v = torch.ones(4) * (1 - b2**t)  # bias-corrected second moment: 1
    MDMLocalizer(lr=0.001, time_scale=1.0)._extrapolate(p, m, v, t, 110)  # 100 more steps of about lr each
    torch.testing.assert_close(p, torch.tensor([0.4, 0.6, 1.0, 0.5]), atol=1e-6, rtol=0)  # 0.9 + 0.1 clamps at 1
    # with linear steps between passes the projection counts schedule steps: 5 of 10 passes are 50 of 100 steps
    t = torch.tensor(50.0)
    one = lambda value: torch.full((1, 1, 1, 1), value)  # noqa: E731 - a task of one mask of one cell
    loc = MDMLocalizer(lr=0.001, steps=100, adam_steps=10)
    q = loc._projected(one(0.5), one(1 - b1**t), one(1 - b2**t), torch.full((1, 1), 5))
    torch.testing.assert_close(q, one(0.45), atol=1e-6, rtol=0)


def test_mixed_precision_path_matches_fp32():
    model = BoxOracle(BOX)
    sel = LogitSelector(model, 0)
    ref = MDMLocalizer(steps=150).localize(oracle_image(), sel)
    bf16 = MDMLocalizer(steps=150, precision="bf16").localize(oracle_image(), sel)
    assert bf16.settings["precision"] == "bf16"
    assert dice(ref.binary(90), bf16.binary(90)) >= 0.95


def test_precision_auto_keeps_bf16_only_where_it_is_measured_faster():
    import time

    calls = []

    def passes(seconds):
        def grads(precision, batch):
            calls.append(precision)
            time.sleep(seconds[precision])
            return None, batch
        return grads

    cpu = torch.device("cpu")
    loc = MDMLocalizer(precision="auto")
    assert loc._resolve_precision(passes({"fp32": 0.03, "bf16": 0.01}), 27, cpu, ("a",)) == ("bf16", 27)
    assert calls == ["fp32"] * 3 + ["bf16"] * 3  # a warm-up and two timed calls each
    assert loc._resolve_precision(passes({"fp32": 0.03, "bf16": 0.01}), 27, cpu, ("a",)) == ("bf16", 27)
    assert len(calls) == 6  # decided once per key
    # bf16 only 1.1x faster: not worth its rounding
    assert loc._resolve_precision(passes({"fp32": 0.022, "bf16": 0.02}), 27, cpu, ("b",))[0] == "fp32"
    assert MDMLocalizer(precision="fp32")._resolve_precision(passes({}), 27, cpu, ("a",)) == ("fp32", 27)


def test_precision_auto_search_reports_what_it_used():
    sel = LogitSelector(BoxOracle(BOX), 0)
    loc = MDMLocalizer(steps=20, precision="auto").localize(oracle_image(), sel)
    assert loc.settings["precision"] == "auto"
    assert loc.settings["precision_used"] in ("fp32", "bf16")


def test_baselines():
    x = torch.randn(2, 3, 20, 24)
    assert torch.equal(Perturbation("zero").baseline(x), torch.zeros_like(x))
    assert torch.allclose(Perturbation("mean").baseline(x)[:, :, 3, 5], x.mean((2, 3)))
    blurred = gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    const = torch.full((1, 1, 9, 9), 0.7)
    assert torch.allclose(gaussian_blur(const, 3.0), const, atol=1e-6)  # a blur keeps constants
    loc = MDMLocalizer(sizes=(4,), steps=3, gamma=0.0, baseline="blur", blur_sigma=2.0)
    assert loc.localize(oracle_image(), LogitSelector(BoxOracle(BOX), 0)).heatmap.shape == (64, 64)


def test_masks_stay_in_unit_interval():
    model = BoxOracle(BOX)
    fit = MDMLocalizer(sizes=(4, 9), steps=200, lr=0.05, gamma=1).fit_masks(oracle_image(), LogitSelector(model, 1))
    assert fit.masks.min() >= 0 and fit.masks.max() <= 1
    assert fit.masks.min() == 0 and fit.masks.max() == 1  # a large lr drives them onto the bounds


def test_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="lr must be > 0"):
        MDMLocalizer(lr=-1)
    with pytest.raises(ConfigError, match="gamma"):
        MDMLocalizer(sizes=(4, 5), gamma=5)
    with pytest.raises(ConfigError, match="baseline"):
        MDMLocalizer(baseline="noise")
    with pytest.raises(UserError, match=r"pair \(2, 0\) out of range: 2 image"):
        MDMLocalizer(steps=1).localize(torch.zeros(2, 3, 64, 64), LogitSelector(BoxOracle(BOX), 0), [(2, 0)])


def test_shipped_mdm_yaml_is_the_default_config():
    from pathlib import Path

    from protomdm.explain.mdm import load_mdm_config

    assert load_mdm_config(Path(__file__).parents[2] / "configs" / "mdm.yaml") == MDMConfig()


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_packed_upsampling_is_f_interpolate(mode):
    from protomdm.explain.mdm import MaskUpsampler

    sizes = (3, 5, 8)
    ups = MaskUpsampler(sizes, (20, 28), mode, torch.device("cpu"))
    p = ups.init(2, 0.0)
    g = torch.Generator().manual_seed(0)
    for i, a in enumerate(sizes):
        p[:, i, :a, :a] = torch.rand(2, a, a, generator=g)
    out = ups(p)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    for i, a in enumerate(sizes):
        ref = torch.nn.functional.interpolate(ups.unpack(p, i)[:, None], size=(20, 28), mode=mode, **kwargs)[:, 0]
        torch.testing.assert_close(out[:, i], ref, atol=1e-6, rtol=0)
    # the cells' gradient is the adjoint: <U d V^T, G> = <d, U^T G V>
    grad = torch.randn(2 * 3, 20, 28, generator=g)
    cells = ups.to_cells(grad, torch.arange(6) % 3).view(2, 3, 8, 8)
    torch.testing.assert_close((out.flatten(0, 1) * grad).sum(), (p * cells).sum(), rtol=1e-5, atol=1e-4)
    # every task's masks in order (which=None: no gather) give the same cells; a subset gives its rows
    torch.testing.assert_close(ups.to_cells(grad).view(2, 3, 8, 8), cells)
    torch.testing.assert_close(ups.to_cells(grad[[1, 5]], torch.tensor([1, 2])), cells.flatten(0, 1)[[1, 5]])


def test_paper_loss_batched_equals_one_mask_at_a_time():
    model = tiny_model("protopnet", seed=1, img_size=(32, 32))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loc = MDMLocalizer(sizes=(3, 5, 8), steps=25, gamma=0.0, loss="paper", lambda1=1e-2, lambda2=1.0)
    sel = PrototypeSelector(model, prototype=3)
    batched = loc.fit_masks(x, sel)
    seq = loc.localize_sequential(x, sel)
    assert np.allclose(masks_to_heatmap(batched.masks[0], 0.0), seq.heatmap, atol=1e-4)
    assert (batched.masks - 0.5).abs().max() > 0.02


def test_a_loss_per_task_equals_separate_searches():
    from protomdm.explain.mdm import MDMLoss

    sel = LogitSelector(BoxOracle(BOX), 0)
    x = oracle_image()
    loc = MDMLocalizer(sizes=(4, 6), steps=30, gamma=0.0, tol=None, extrapolate_after=None)
    losses = [MDMLoss("normalised", 0.01), MDMLoss("normalised", 3.0), MDMLoss("paper", lambda1=1e-3, lambda2=1.0)]
    grid = loc.fit_masks(x, sel, [(0, 0)] * 3, losses)
    for t, loss in enumerate(losses):
        alone = MDMLocalizer(loc.config, loss=loss.kind, lambda_l1=loss.lambda_l1, lambda1=loss.lambda1,
                             lambda2=loss.lambda2).fit_masks(x, sel)
        torch.testing.assert_close(grid.masks[t], alone.masks[0], atol=1e-5, rtol=0)
    assert (grid.masks[0] - grid.masks[1]).abs().max() > 0.05  # the area weight made a difference


def test_passes_with_linear_steps_between_are_the_full_schedule_where_the_activation_is_linear():
    """Between passes the schedule's every Adam step is taken, the gradient from the activation linearised at the
    pass: for an activation linear in the image that is the full schedule itself, whatever the passes; one scaled
    step per pass is not."""
    sel = LogitSelector(BoxOracle(BOX, linear=True), 0)
    x = oracle_image()
    settings = {"sizes": (4, 6, 9), "steps": 200, "lr": 0.01, "gamma": 0.0, "lambda_l1": 1.0}
    full = MDMLocalizer(time_scale=1.0, **settings).fit_masks(x, sel)
    for passes in (7, 30):  # 28.6 and 6.7 schedule steps per pass
        fit = MDMLocalizer(adam_steps=passes, **settings).fit_masks(x, sel)
        assert int(fit.steps.max()) == passes
        torch.testing.assert_close(fit.masks, full.masks, atol=1e-5, rtol=0)
        scaled = MDMLocalizer(adam_steps=passes, between_passes="scaled", **settings).fit_masks(x, sel)
        assert (scaled.masks - full.masks).abs().max() > 0.04  # measured 0.18 and 0.05
    # with a ReLU in the activation, linear steps come 10-60x closer to the full schedule than scaled ones
    sel = LogitSelector(BoxOracle(BOX), 0)
    full = MDMLocalizer(time_scale=1.0, **settings).fit_masks(x, sel).masks
    for passes in (7, 30):
        linear, scaled = (MDMLocalizer(adam_steps=passes, between_passes=b, **settings).fit_masks(x, sel).masks
                          for b in ("linear", "scaled"))
        assert (linear - full).abs().max() < 0.2 * (scaled - full).abs().max()


def test_time_scale_is_adam_with_scaled_rate_and_decays():
    """One engine step of time_scale k (``between_passes: scaled``) is torch.optim.Adam with lr * k and
    betas ** k."""
    sel = LogitSelector(BoxOracle(BOX), 0)
    x = oracle_image()
    k, steps = 4.0, 40
    cfg = MDMConfig(sizes=(5,), steps=int(k * steps), time_scale=k, tol=None, extrapolate_after=None, gamma=0.0,
                    lambda_l1=0.3, between_passes="scaled")
    fit = MDMLocalizer(cfg).fit_masks(x, sel)
    assert int(fit.steps.max()) == steps
    with torch.no_grad():
        target, masked = sel(torch.cat([x, torch.zeros_like(x)])).split(1)
    scale = float(((target - masked) ** 2).sum())
    d = torch.full((1, 1, 5, 5), 0.5, requires_grad=True)
    opt = torch.optim.Adam([d], lr=cfg.lr * k, betas=(0.9**k, 0.999**k), eps=1e-8)
    up = lambda d: torch.nn.functional.interpolate(d, size=(64, 64), mode="bilinear", align_corners=False)  # noqa: E731
    for _ in range(steps):
        loss = ((sel(up(d) * x) - target) ** 2).sum() / scale + cfg.lambda_l1 * d.abs().mean()
        (d.grad,) = torch.autograd.grad(loss, d)
        opt.step()
        with torch.no_grad():
            d.clamp_(0, 1)
    torch.testing.assert_close(fit.masks[0, 0], up(d.detach())[0, 0], atol=1e-5, rtol=0)


def test_standardised_heatmap_is_the_papers_and_keeps_the_ranking():
    from protomdm.explain.mdm import standardised_heatmap
    from protomdm.report.figures import paper_overlay

    masks = np.random.default_rng(0).random((27, 8, 8))
    h = masks_to_heatmap(masks, gamma=12.0)
    s = masks.sum(0)
    s[s < 12.0] = 0
    expected = (s - s.mean()) / s.std()  # M^h from the sum of the masks, as the paper writes it
    np.testing.assert_allclose(standardised_heatmap(h), expected, atol=1e-5)
    assert (np.argsort(standardised_heatmap(h), axis=None) == np.argsort(h, axis=None)).all()
    assert np.all(standardised_heatmap(np.ones((4, 4))) == 0)
    img = np.full((8, 8), 0.5)
    np.testing.assert_allclose(paper_overlay(img, h, 1.0, 0.1), np.clip(0.5 + 0.1 * expected, 0, 1), atol=1e-5)


def test_default_p90_mask_lies_inside_a_small_evidence_box():
    """Evidence in a 12 x 12 box (3.5% of the image): the default's top-10% mask stays in it (and the box's rim).

    With lambda_l1 0.003 (the default before the area study) the heatmap covered a fifth of the image and this failed.
    """
    small = (28, 30, 40, 42)
    loc = MDMLocalizer().localize(oracle_image(), LogitSelector(BoxOracle(small), 0))
    mask = loc.binary(90)
    rim = box_mask((small[0] - 2, small[1] - 2, small[2] + 2, small[3] + 2), (64, 64))
    assert loc.ok and mask.sum() > 0
    assert (mask & rim).sum() >= 0.9 * mask.sum(), loc.box(90)
    assert (mask & box_mask(small, (64, 64))).sum() >= 0.5 * box_mask(small, (64, 64)).sum()


def test_adam_step_is_torch_adam_with_zero_and_vanishing_gradients():
    """The batched engine's Adam (its denominator kept off zero, for speed) is ``torch.optim.Adam`` and the clamp,
    with gradients that are zero (a packed mask's unused cells), vanishing (their squares subnormal) or ordinary,
    on every entry or only on those kept."""
    from protomdm.explain.mdm import ADAM_BETAS, adam_step

    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.0, 1e-20, 1e-9, 1e-3])[:, None]  # per row: zero, vanishing, small, ordinary
    keep = torch.rand(4, 6, generator=gen) > 0.3
    for kept in (None, keep):
        p, m, v = torch.full((4, 6), 0.5), torch.zeros(4, 6), torch.zeros(4, 6)
        ref = torch.full((4, 6), 0.5, requires_grad=True)
        opt = torch.optim.Adam([ref], lr=3e-3, betas=ADAM_BETAS, eps=1e-8)
        for t in range(1, 301):
            g = torch.randn(4, 6, generator=gen) * scale
            adam_step(p, g, m, v, t, ADAM_BETAS, 3e-3, kept)
            ref.grad = g if kept is None else g * keep
            opt.step()
            with torch.no_grad():
                ref.clamp_(0, 1)
        expected = ref.detach() if kept is None else torch.where(keep, ref.detach(), 0.5)
        torch.testing.assert_close(p, expected, atol=1e-6, rtol=0)
        moved = torch.ones_like(keep) if kept is None else keep
        assert (p[2:][moved[2:]] != 0.5).all() and (p[0] == 0.5).all()  # the ordinary gradients moved their cells


def test_flush_subnormal_by_hand():
    from protomdm.explain.mdm import flush_subnormal

    x = torch.tensor([1e-40, -1e-40, 2e-38, -2e-38, 0.0, -0.5, 1.0])
    flush_subnormal(x)
    assert x.tolist() == pytest.approx([0.0, 0.0, 2e-38, -2e-38, 0.0, -0.5, 1.0], rel=1e-6, abs=0)


def test_search_keeps_no_subnormal_moments(monkeypatch):
    """A mask that the area term empties has no gradient left (the activation is gone, |d| at 0 has none), so its
    first moment decays into the subnormal floats, 25x slower to compute with on x86 CPUs, and stays there; every
    pass starts with those set to zero."""
    import protomdm.explain.mdm as mdm

    seen = []
    step = mdm.adam_step

    def spy(p, g, m, v, t, *args):
        if t % 50 == 1:  # a pass's first step (50 schedule steps per pass)
            seen.append(int(((m != 0) & (m.abs() < mdm.TINY)).sum()))
        step(p, g, m, v, t, *args)

    monkeypatch.setattr(mdm, "adam_step", spy)
    settings = {"sizes": (4, 6), "lambda_l1": 50.0, "adam_steps": 40, "gamma": 0.0}
    sel, x = LogitSelector(BoxOracle(BOX), 0), oracle_image()
    fit = MDMLocalizer(**settings).fit_masks(x, sel)
    assert float(fit.masks.max()) == 0.0 and len(seen) == 40 and max(seen) == 0
    seen.clear()
    monkeypatch.setattr(mdm, "flush_subnormal", lambda *tensors: None)  # the same search without the flush
    MDMLocalizer(**settings).fit_masks(x, sel)
    assert max(seen) > 0
