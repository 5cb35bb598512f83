import json
import re

import numpy as np
import pytest
import torch

from protomdm.cli import main
from protomdm.explain.mdm import MDMConfig
from protomdm.jobs.bench import PAPER_PASSES, format_table, run_bench


def test_bench_compares_the_schedules_and_they_agree(tmp_path):
    # a trained model: a random-weight model's gradients are so flat that Adam, which normalises them, amplifies the
    # rounding differences of batch-of-27 vs batch-of-1 forward passes
    from conftest import small_config

    from protomdm.training import train

    train(small_config(), tmp_path / "m", progress=False)
    # ours set to the full schedule: it must agree with the reference, the same search run on the same images
    mdm = MDMConfig(steps=60, extrapolate_after=None, tol=None)
    rows, what = run_bench(images=2, ref_steps=6, mdm=mdm, progress=False, ckpt=str(tmp_path / "m" / "best.pt"))
    paper, batched, ours, many = rows
    assert paper.steps == batched.steps == ours.steps == many.steps == 60
    assert paper.passes == batched.passes == ours.passes == 27 * 60
    assert ours.dice_p90 > 0.99 and ours.pearson_r > 0.999 and many.dice_p90_min > 0.99
    assert ours.loss_ratio == pytest.approx(1.0, rel=1e-3) and many.loss_ratio == pytest.approx(1.0, rel=1e-3)
    assert all(r.seconds > 0 and r.overhead > 0 and r.passes_per_second > 0 for r in rows)
    table = format_table(rows, "note")
    assert "overhead" in table and "Dice p90" in table and "loss/full" in table and "projected to 60" in table
    assert f"{PAPER_PASSES / (27 * 60):.1f}x" in table  # passes against the paper's 54,000


def test_bench_command_says_what_it_measured(capsys, tmp_path):
    code = main(["bench", "--img-size", "32", "--images", "1", "--ref-steps", "2", "--steps", "6",
                 "--extrapolate-after", "3", "--quiet", "--device", "cpu", "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert code == 0 and "timing only" in out and "projected" in out and "on cpu" in out
    ours = next(line.split() for line in out.splitlines() if line.startswith("ours "))
    assert ours[2] == str(27 * 3) and ours[4] == "3"  # passes, steps taken
    record = json.loads((tmp_path / "b.json").read_text())
    assert [r["schedule"] for r in record["rows"]][:3] == ["paper (sequential)", "paper schedule, batched", "ours"]
    assert record["rows"][2]["passes"] == 81 and record["paper_passes"] == 54000


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_overhead_is_against_the_bare_pass_timed_before_and_after_the_searches(monkeypatch, precision):
    """The machine's speed drifts over a bench: each bare pass is timed before the searches and after them, and the
    overhead ratio is against their mean; the references' (fp32) and, where ours may take it, bf16's."""
    import protomdm.jobs.bench as bench

    calls: list[tuple[int, str]] = []

    def fake(selector, x, batch, precision="fp32", **kwargs):
        calls.append((batch, precision))
        return 1e-3 if calls.count((batch, precision)) == 1 else 3e-3  # a slower machine the second time

    monkeypatch.setattr(bench, "bare_pass_seconds", fake)
    rows, _ = run_bench(img_size=32, images=1, ref_steps=2, mdm=MDMConfig(steps=4, tol=None, precision=precision),
                        progress=False, device="cpu")
    assert calls == ([(1, "fp32"), (27, "fp32")] + [(27, "bf16")] * (precision != "fp32")) * 2
    for r in rows:
        assert r.overhead == pytest.approx(r.seconds / (r.passes * 2e-3), rel=1e-6)


def test_bench_runs_on_ones_own_images(capsys, tmp_path):
    from PIL import Image

    from protomdm.data.images import read_image
    from protomdm.jobs.bench import bench_images

    rng = np.random.default_rng(0)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name, shape in (("b.png", (50, 40)), ("sub/a.png", (40, 40)), ("c.png", (30, 60))):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(tmp_path / "in" / name)
    # the first --images of the folder, found as folder runs find them; a bad input fails before the demo model
    # would be trained (no --img-size here)
    images = bench_images([tmp_path / "in"], 2)
    assert [im.source for im in images] == [tmp_path / "in" / "b.png", tmp_path / "in" / "c.png"]
    assert np.array_equal(images[1].pixels, read_image(tmp_path / "in" / "c.png").pixels)
    code = main(["bench", "--img-size", "32", "--images", "5", "--ref-steps", "2", "--steps", "4", "--quiet",
                 "--device", "cpu", "--input", str(tmp_path / "in" / "b.png"), "--input", str(tmp_path / "in" / "sub")])
    out = capsys.readouterr().out
    assert code == 0 and "2 image(s) from --input" in out and "loss/full" in out
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["bench", "--quiet", "--input", str(tmp_path / "bad.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["bench", "--quiet", "--input", str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--images", "1", "--steps", "10", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "report.png").stat().st_size > 10_000 and (tmp_path / "model" / "best.pt").exists()
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert rows[0].startswith("image,prototype,method") and len(rows) == 3
    assert "report:" in out and "mdm" in out and "upsample" in out
    accuracy, on_object = re.search(r"test accuracy ([\d.]+); prototypes pushed onto an object of their own class "
                                    r"(\d+)%", out).groups()
    assert float(accuracy) >= 0.9 and int(on_object) >= 50  # measured: 0.98 and 83% (5 of 6)
    # a second run reuses the trained model
    mtime = (tmp_path / "model" / "best.pt").stat().st_mtime
    assert main(["demo", "--out", str(tmp_path), "--images", "1", "--steps", "5", "--quiet"]) == 2  # report there
    assert main(["demo", "--out", str(tmp_path), "--images", "1", "--steps", "5", "--quiet", "--overwrite"]) == 0
    assert (tmp_path / "model" / "best.pt").stat().st_mtime == mtime


def test_demo_measures_by_hand():
    """Accuracy over the whole test set, a pushed patch on or off its class's object, a heatmap's maximum on or off
    the object: each measure on cases whose answer is known."""
    from protomdm import build_model
    from protomdm.data.images import model_input
    from protomdm.data.sources import dataset_source
    from protomdm.geometry import mask_box
    from protomdm.jobs.demo import demo_config, demo_measures

    cfg = demo_config()
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    train_set, test_set, _ = dataset_source(cfg.data).training(cfg.model)
    s = train_set.sample(5)
    c = int(s.labels.argmax())
    x0, y0, x1, y1 = mask_box(s.masks[c])
    off = next((x, y) for y in range(0, 60, 4) for x in range(0, 60, 4) if not s.masks[c][y:y + 4, x:x + 4].any())
    records = [{"image": 5, "class_index": c, "activation_box": [x0, y0, x1, y1]},
               {"image": 5, "class_index": c, "activation_box": [off[0], off[1], off[0] + 4, off[1] + 4]}]
    truth = s.masks[c]
    on, away = np.zeros((64, 64)), np.zeros((64, 64))
    on[tuple(np.argwhere(truth)[0])] = 1
    away[off[1], off[0]] = 1
    got = demo_measures(model, cfg, records, [on, away], [truth, truth])
    assert got["prototypes_on_own_object"] == 0.5 and got["mdm_pointing_game"] == 0.5
    with torch.no_grad():  # the accuracy, recomputed on the whole test set
        xs = torch.stack([test_set[i][0] for i in range(len(test_set))])
        pred = model(model_input(xs, cfg.model)).argmax(1)
    labels = torch.tensor([test_set[i][1] for i in range(len(test_set))])
    assert got["test_accuracy"] == pytest.approx(float((pred == labels).float().mean()))
    assert np.isnan(demo_measures(model, cfg, None, [], [])["prototypes_on_own_object"])
