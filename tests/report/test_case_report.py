"""Seeing the reasoning: prototype provenance, the gallery, the case report (contributions that add up to the
logit, self-contained HTML without patient data) and what a browser renders of them."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_config, tiny_model
from dicom_factory import PATIENT_ID, PATIENT_NAME, make_dicom
from dicom_validation import DCIODVFY, dciodvfy_errors
from PIL import Image

from protomdm import explain_case, load_model, save_checkpoint
from protomdm.cli import main
from protomdm.data.images import model_input
from protomdm.data.synthetic import SyntheticLesions
from protomdm.explain.case import prototype_contributions
from protomdm.models import read_checkpoint
from protomdm.report.gallery import make_gallery, push_records, source_pixels
from protomdm.training import train

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "area", "base", "source", "wbr", "track", "embed", "param"}


class StrictParser(HTMLParser):
    """Fails on any end tag that does not close the innermost open element; collects every URL-bearing value."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.urls: list[str] = []
        self.doctype = False

    def handle_decl(self, decl):
        self.doctype |= decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def check_self_contained_html(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    parser = StrictParser()
    parser.feed(text)
    parser.close()
    assert parser.doctype and not parser.stack, parser.stack
    external = [u for u in parser.urls if not (u.startswith("data:image/png;base64,") or re.fullmatch(r"[\w./-]+\.html", u))]
    assert not external, external[:3]
    bare = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"https?:|ftp:|url\(|@import|//[a-z0-9]", bare, re.I)  # nothing fetched from anywhere
    return text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small synthetic ProtoPNet trained with a push: its checkpoint records every prototype's source."""
    out = tmp_path_factory.mktemp("trained")
    cfg = small_config("protopnet")
    cfg.model = dataclasses.replace(cfg.model, prototypes_per_class=2)
    train(cfg, out, progress=False)
    return cfg, out / "best.pt"


@pytest.mark.parametrize("architecture", ["protopnet", "xprotonet"])
def test_contributions_plus_bias_equal_the_logit(architecture):
    model = tiny_model(architecture, seed=3)
    x = torch.rand(1, 3, 48, 48) * 2 - 1
    weight, sims, bias, logits = prototype_contributions(model, x)
    torch.testing.assert_close((weight * sims).sum(1) + bias, logits, atol=1e-5, rtol=0)
    report = explain_case(model, x, top_k=model.num_prototypes, method="upsample")
    shown = sum(r.contribution for r in report.rows)
    assert abs(shown + report.rest + report.bias - report.logit) < 1e-5
    assert report.logit == pytest.approx(float(logits[list(model.class_names).index(report.explained_class)]))
    top2 = explain_case(model, x, top_k=2, method="upsample")
    assert len(top2.rows) == 2 and abs(sum(r.contribution for r in top2.rows) + top2.rest + top2.bias - top2.logit) < 1e-5
    assert [r.contribution for r in top2.rows] == sorted([r.contribution for r in top2.rows], reverse=True)


def test_provenance_is_an_image_of_its_class_and_reproduces_its_similarity(trained):
    cfg, ckpt = trained
    model = load_model(ckpt)
    records = push_records(read_checkpoint(ckpt)["extra"])
    assert records and len(records) == model.num_prototypes
    train_set = SyntheticLesions(cfg.model.class_names, n=cfg.data.num_train, size=cfg.model.img_size[0],
                                 channels=cfg.model.in_channels, seed=cfg.data.seed, multilabel=cfg.data.multilabel)
    for rec in records:
        j, i = rec["prototype"], rec["image"]
        pixels, label, _ = train_set[i]
        assert label == model.prototype_class(j) == rec["class_index"]
        assert rec["source"] == f"synthetic seed {cfg.data.seed} #{i}" and rec["dataset"] == "synthetic"
        thumb = source_pixels(rec)
        assert thumb.shape[:2] == tuple(cfg.model.img_size)
        np.testing.assert_allclose(thumb, pixels.numpy().transpose(1, 2, 0), atol=1 / 255 + 1e-6)  # the image itself
        with torch.no_grad():
            x = model_input(pixels[None], model.config)
            _, d = model.push_forward(x)
            h, w = rec["patch"]
            score = float(model.prototype_scores(x, [j])[0, 0])
        assert float(d[0, j, h, w]) < 1e-3  # the prototype lies on its recorded patch
        assert score == pytest.approx(rec["similarity"], rel=1e-4)


def test_gallery_and_case_report_are_self_contained_and_readable(trained, tmp_path, capsys):
    cfg, ckpt = trained
    assert main(["prototypes", "--ckpt", str(ckpt), "--out", str(tmp_path / "g"), "--steps", "60", "--quiet"]) == 0
    model = load_model(ckpt)
    g = tmp_path / "g"
    html = check_self_contained_html(g / "gallery.html")
    assert all(f"<h2>{c} ({cfg.model.prototypes_per_class} prototypes)</h2>" in html for c in model.class_names)
    rows = (g / "index.csv").read_text().splitlines()
    assert rows[0].startswith("prototype,class_name,weight") and len(rows) == 1 + model.num_prototypes
    assert len(list(g.glob("prototype_*.png"))) == model.num_prototypes

    scan = tmp_path / "scan.png"
    sample = SyntheticLesions(cfg.model.class_names, n=1, size=32, seed=5).sample(0)

    Image.fromarray((sample.image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(scan)
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(scan), "--report", "--top-k", "99", "--steps", "60",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"top-k 99 asked for, but only {model.num_prototypes} prototypes contribute" in out  # clipped, and said
    page = check_self_contained_html(tmp_path / "r" / "scan_report.html")
    assert "looks like" in page and page.count("data:image/png") >= 2 * 2
    assert (tmp_path / "r" / "scan_report.png").stat().st_size > 1000


def test_a_checkpoint_without_provenance_still_gives_a_gallery(tmp_path, capsys):
    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    assert main(["prototypes", "--ckpt", str(ckpt), "--out", str(tmp_path / "g"), "--quiet"]) == 0
    assert "records no prototype sources" in capsys.readouterr().out
    html = check_self_contained_html(tmp_path / "g" / "gallery.html")
    assert "records no prototype sources" in html and html.count("<tr><td") == 3 * 2  # 6 prototypes listed
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(tmp_path / "nope.png"), "--report", "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_case_reports_of_a_dicom_folder_carry_no_patient_data(tmp_path, capsys):
    ckpt = save_checkpoint(tiny_model("xprotonet", in_channels=1, mean=(0.5,), std=(0.25,)), tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    src = tmp_path / "in" / f"{PATIENT_NAME.split('^')[0]}"
    src.mkdir(parents=True)
    make_dicom(src / "scan.dcm", (rng.random((60, 50)) * 4095).astype(np.uint16), bits_stored=12)
    (src / "broken.png").write_bytes(b"not a png")
    code = main(["localize", "--ckpt", str(ckpt), "--input", str(tmp_path / "in"), "--report", "--method", "upsample",
                 "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 1 and "failed: Doe/broken.png" in capsys.readouterr().out  # the bad image fails alone
    assert "Doe/broken.png" in (tmp_path / "r" / "failures.txt").read_text()
    check_self_contained_html(tmp_path / "r" / "index.html")
    reports = list((tmp_path / "r").rglob("*_report*.*"))
    assert len(reports) == 4 and all(p.name.startswith("dcm-") for p in reports)
    assert "Doe" not in (tmp_path / "r" / "reports.csv").read_text()  # its resume table keys paths by a hash
    for p in reports:
        data = p.read_bytes()
        assert PATIENT_NAME.encode() not in data and PATIENT_ID.encode() not in data and b"Doe^Jane" not in data
    # the SR: the decision and each top prototype with its numbers and its box in the scan
    hd = pytest.importorskip("highdicom")
    (sr_path,) = (tmp_path / "r").rglob("*_report_sr.dcm")
    report = json.loads(next((tmp_path / "r").rglob("*_report.json")).read_text())
    sr = hd.sr.srread(sr_path)
    (decision,) = sr.content.get_image_measurement_groups()
    explained = next(c for c in report["classes"] if c["name"] == report["explained_class"])
    assert decision.finding_type.meaning == report["explained_class"]
    assert decision.get_measurements()[0].value == pytest.approx(explained["probability"], rel=1e-5)
    rois = sr.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in rois] == [f"prototype {r['prototype']}" for r in report["rows"]]
    for g, row in zip(rois, report["rows"]):
        got = {m.name.meaning: m.value for m in g.get_measurements()}
        assert got["Prototype contribution"] == pytest.approx(row["contribution"], rel=1e-5, abs=1e-6)
        assert got["Prototype weight"] == pytest.approx(row["weight"], rel=1e-5, abs=1e-6)
        x0, y0 = g.roi.value[0]
        assert 0 <= x0 < 50 and 0 <= y0 < 60  # in the scan's pixels (50 x 60), not the model input's
    if DCIODVFY:
        assert dciodvfy_errors(sr_path) == []


def test_a_folder_of_case_reports_resumes_after_an_interruption(tmp_path, capsys, monkeypatch):
    import protomdm.jobs.case_report as case_report

    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    args = ["localize", "--ckpt", str(ckpt), "--input", str(folder), "--report", "--method", "upsample", "--top-k",
            "2", "--out", str(tmp_path / "r"), "--quiet"]
    real, calls = case_report.explain_case, []

    def counted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(case_report, "explain_case", counted)
    assert main(args) == 130
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # an earlier run's table is not overwritten
    assert main([*args[:-3], "--top-k", "3", "--out", str(tmp_path / "r"), "--quiet", "--resume"]) == 2
    assert "top_k was 2, now 3" in capsys.readouterr().err  # nor mixed with other settings
    assert main([*args, "--resume"]) == 0
    assert len(calls) == 2 + 2  # the interrupted run's two calls, then only the two images left
    with open(tmp_path / "r" / "reports.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["input"] for r in rows) == ["img0.png", "img1.png", "img2.png"]
    assert all(r["status"] == "ok" and (tmp_path / "r" / r["html"]).is_file() for r in rows)
    assert check_self_contained_html(tmp_path / "r" / "index.html").count("<tr><td><a") == 3


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium (Debian's chromium package) is not "
                    "installed here")
def test_a_browser_renders_the_gallery_and_a_case_report(trained, tmp_path):
    _, ckpt = trained
    make_gallery(ckpt, tmp_path / "g", method="upsample")
    pages = [tmp_path / "g" / "gallery.html"]
    model = load_model(ckpt)
    x = torch.rand(1, 3, 32, 32)
    from protomdm.data.loaded import LoadedImage
    from protomdm.report.case import write_case_report

    report = explain_case(model, x, top_k=3, method="upsample", provenance=push_records(read_checkpoint(ckpt)["extra"]))
    files = write_case_report(report, LoadedImage(np.full((32, 32, 3), 0.5, np.float32), Path("x.png")), tmp_path,
                              "x", "Case report: x")
    pages.append(files["html"])
    for html in pages:
        shot = html.with_suffix(".screenshot.png")
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={shot}", "--window-size=1200,1400", html.as_uri()], check=True,
                       capture_output=True, timeout=120)

        img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        assert img.shape == (1400, 1200) and img.std() > 10  # something was drawn, not a blank page
