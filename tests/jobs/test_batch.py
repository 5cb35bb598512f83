"""`protomdm localize --input DIR`: mixed folders, results.csv, failures, resume after an interruption, DICOM outputs,
no patient data in anything written or printed, inputs never modified."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np
import pytest
from conftest import tiny_model
from dicom_factory import PATIENT_ID, PATIENT_NAME, make_dicom
from PIL import Image

from protomdm import save_checkpoint
from protomdm.cli import main
from protomdm.jobs.folder import find_inputs, localize_folder
from protomdm.jobs.localize import LocalizeJob

pytest.importorskip("highdicom")
FAST = ["--steps", "5", "--quiet"]


@pytest.fixture
def grey_ckpt(tmp_path):
    return save_checkpoint(tiny_model("xprotonet", in_channels=1, mean=(0.5,), std=(0.25,)), tmp_path / "cxr.pt")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "in"
    (d / "study" / "series").mkdir(parents=True)
    make_dicom(d / "chest.dcm", (rng.random((80, 64)) * 4095).astype(np.uint16), bits_stored=12,
               WindowCenter=2048, WindowWidth=4096)
    make_dicom(d / "study" / "series" / "IM0001", (rng.random((50, 60)) * 255).astype(np.uint8),
               photometric="MONOCHROME1")
    Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(d / "study" / "photo.png")
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(d / "colour.jpg")
    (d / "broken.dcm").write_text("not a DICOM file")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


def _digest(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    o = capsys.readouterr()
    return code, o.out + o.err


def test_folder_run_writes_a_row_per_image_and_goes_on_after_failures(capsys, tmp_path, folder, grey_ckpt):
    before = _digest(folder)
    out = tmp_path / "out"
    code, text = _cli(capsys, "localize", "--ckpt", grey_ckpt, "--input", folder, "--out", out, *FAST)
    assert code == 1  # some images failed
    rows = {r["input"]: r for r in _rows(out)}
    assert set(rows) == {"chest.dcm", "study/series/IM0001", "study/photo.png", "colour.jpg", "broken.dcm"}
    assert rows["broken.dcm"]["status"] == "failed" and "not a DICOM file" in rows["broken.dcm"]["error"]
    assert "broken.dcm" in (out / "failures.txt").read_text() and "broken.dcm" in text
    for name in ("chest.dcm", "study/series/IM0001", "study/photo.png", "colour.jpg"):
        r = rows[name]
        assert r["status"] == "ok" and r["error"] == "" and r["class_name"] in ("a", "b", "c"), r
        assert int(r["box_x0"]) < int(r["box_x1"]) and (out / r["output"]).is_dir()
    dcm_dir = out / rows["chest.dcm"]["output"]
    assert dcm_dir.name.startswith("dcm-")
    names = sorted(p.name.split("_", 1)[1] for p in dcm_dir.iterdir())
    assert names == ["heatmap.dcm", "localization.json", "mask.png", "overlay.png", "seg.dcm", "sr.dcm"]
    assert json.loads(next(dcm_dir.glob("*.json")).read_text())["image_size"] == [80, 64]
    assert not list((out / rows["study/photo.png"]["output"]).glob("*.dcm"))  # DICOM outputs only for DICOM
    assert _digest(folder) == before  # inputs untouched
    assert not list(out.glob(".tmp-*"))


def test_no_patient_data_anywhere_unless_keep_phi(capsys, tmp_path, folder, grey_ckpt):
    out = tmp_path / "out"
    _, text = _cli(capsys, "localize", "--ckpt", grey_ckpt, "--input", folder, "--out", out, *FAST)
    needles = [s.encode() for s in (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID, "ACC-4471")]
    for p in [*out.rglob("*")]:
        assert all(n.decode() not in p.name for n in needles)
        if p.is_file():
            blob = p.read_bytes()
            assert not [n for n in needles if n in blob], p
    assert not [n for n in needles if n.decode() in text]

    out2 = tmp_path / "phi"
    _cli(capsys, "localize", "--ckpt", grey_ckpt, "--input", folder, "--out", out2, "--keep-phi", *FAST)
    segs = list(out2.rglob("*_seg.dcm"))
    assert segs and all(PATIENT_NAME.encode() in p.read_bytes() for p in segs)


def test_resume_after_interruption_does_every_image_once(tmp_path, folder, grey_ckpt, monkeypatch):
    job = LocalizeJob.load(grey_ckpt, mdm=None, method="upsample")
    out = tmp_path / "out"
    real_write, calls = LocalizeJob.write, []

    def flaky_write(self, image, j, loc, probability, dest, stem):
        calls.append(stem)
        if len(calls) == 3:
            (dest / "half_written.png").write_bytes(b"partial")
            raise KeyboardInterrupt  # killed mid-image
        return real_write(self, image, j, loc, probability, dest, stem)

    monkeypatch.setattr(LocalizeJob, "write", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        localize_folder(job, folder, out, progress=False)
    first = _rows(out)  # broken.dcm (failed), then two images done before the third was killed
    assert [r["status"] for r in first] == ["failed", "ok", "ok"]

    monkeypatch.setattr(LocalizeJob, "write", real_write)
    with pytest.raises(Exception, match="pass `resume` to finish it"):
        localize_folder(job, folder, out, progress=False)
    res = localize_folder(job, folder, out, resume=True, progress=False)
    assert res.skipped == 2 and res.done == 2 and res.failed == 1
    rows = _rows(out)
    assert sorted(r["input"] for r in rows) == sorted(p.relative_to(folder).as_posix() for p in find_inputs(folder))
    assert not list(out.rglob("half_written.png")) and not list(out.glob(".tmp-*"))
    assert {p.name for p in out.iterdir() if p.is_dir()} == {r["output"] for r in rows if r["status"] == "ok"}


def test_file_vanishing_mid_run_fails_alone(tmp_path, folder, grey_ckpt):
    job = LocalizeJob.load(grey_ckpt, method="upsample")
    files = find_inputs(folder)
    gone = folder / "colour.jpg"
    gone.unlink()  # listed, then removed before its turn
    res = localize_folder(job, folder, tmp_path / "out", inputs=files, progress=False)
    assert res.failed == 2 and res.done == 3
    assert any(rel == "colour.jpg" and "not found" in why for rel, why in res.failures)


def test_huge_png_is_refused_without_decoding(tmp_path, grey_ckpt):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(np.zeros((3400, 20000), np.uint8)).save(d / "wide.png")
    res = localize_folder(LocalizeJob.load(grey_ckpt, method="upsample"), d, tmp_path / "out", progress=False)
    assert res.failed == 1 and "too large" in res.failures[0][1]


def test_folder_errors_are_one_line(capsys, tmp_path, folder, grey_ckpt):
    locked = tmp_path / "locked"
    locked.mkdir()
    cases = [(["--input", tmp_path / "nope"], "is not a folder"),
             (["--input", folder, "--out", folder / "results"], "inside --input"),
             (["--input", folder, "--out", grey_ckpt / "sub"], "cannot create output folder")]  # a file where a folder must go
    if os.geteuid() != 0:  # root ignores permissions
        os.chmod(locked, 0o500)
        cases.append((["--input", folder, "--out", locked / "x"], "cannot create output folder"))
    for args, msg in cases:
        if "--out" not in args:
            args = [*args, "--out", tmp_path / "o"]
        code, text = _cli(capsys, "localize", "--ckpt", grey_ckpt, *args, *FAST)
        assert code == 2 and msg in text and "Traceback" not in text and text.count("\n") == 1, text
    os.chmod(locked, 0o700)


def _bad_inputs(d):
    """Inputs that once stopped a folder run or slipped through as ok, each crafted small."""
    rng = np.random.default_rng(2)
    px = (rng.random((32, 32)) * 4000).astype(np.uint16)
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor, lut.LUTData = [4096, 0, 12], np.array([0, 1, 2], np.uint16).tobytes()  # says 4096, holds 3
    bad = {
        "voi_lut_short.dcm": dict(VOILUTSequence=[lut]),
        "slope_nan.dcm": dict(RescaleSlope="NaN", RescaleIntercept=0),
        "width_nan.dcm": dict(WindowCenter=100, WindowWidth="NaN", VOILUTFunction="SIGMOID"),
        "width_zero_exact.dcm": dict(WindowCenter=100, WindowWidth=0, VOILUTFunction="LINEAR_EXACT"),
        "spacing_one.dcm": dict(ImagerPixelSpacing=[0.1]),
    }
    for name, attrs in bad.items():
        make_dicom(d / name, px, bits_stored=12, **attrs)
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    for name, kw, vr in (("frames_abc.dcm", "NumberOfFrames", "IS"), ("slope_abc.dcm", "RescaleSlope", "DS")):
        ds = pydicom.dcmread(make_dicom(d / name, px, bits_stored=12, RescaleIntercept=0))
        tag = Tag(tag_for_keyword(kw))
        ds._dict[tag] = RawDataElement(tag, vr, 4, b"abc ", 0, False, True)  # not a number, as some writers do
        ds.save_as(d / name)
        bad[name] = {}
    no_uid = make_dicom(d / "no_study_uid.dcm", px, bits_stored=12)
    import pydicom

    ds = pydicom.dcmread(no_uid)
    del ds.StudyInstanceUID
    ds.save_as(no_uid)
    Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(d / "x y.png")
    Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(d / "x_y.png")
    Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(os.fsencode(d) + b"/caf\xe9.png")
    return set(bad) | {"no_study_uid.dcm"}


def test_no_input_stops_a_folder_run_and_names_never_collide(capsys, tmp_path, grey_ckpt):
    d = tmp_path / "in"
    d.mkdir()
    dicoms = _bad_inputs(d)
    before = _digest(d)
    out = tmp_path / "out"
    code, text = _cli(capsys, "localize", "--ckpt", grey_ckpt, "--input", d, "--out", out, "--method", "upsample",
                      "--quiet")
    assert "Traceback" not in text
    rows = {r["input"]: r for r in _rows(out)}
    assert len(rows) == len(dicoms) + 3 and code in (0, 1)
    for name in ("slope_nan.dcm", "width_nan.dcm", "slope_abc.dcm", "frames_abc.dcm", "voi_lut_short.dcm"):
        assert rows[name]["status"] == "failed" and name in rows[name]["error"], rows[name]
    assert rows["spacing_one.dcm"]["status"] in ("ok", "failed")
    for r in rows.values():  # no NaN score passes as a result
        assert r["status"] != "ok" or np.isfinite(float(r["score"]))
    # the two names that map to one safe name get two folders, each with its own image's outputs
    a, b = rows["x y.png"], rows["x_y.png"]
    assert a["status"] == b["status"] == "ok" and a["output"] != b["output"]
    for r in (a, b):
        rec = json.loads(next((out / r["output"]).glob("*_localization.json")).read_text())
        assert rec["image"].endswith(r["input"])
    assert rows["caf\\xe9.png"]["status"] == "ok"  # a file name that is not UTF-8
    assert _digest(d) == before
    # a resume redoes only the failed ones and stops at none of them
    code2, text2 = _cli(capsys, "localize", "--ckpt", grey_ckpt, "--input", d, "--out", out, "--method", "upsample",
                        "--quiet", "--resume")
    assert "Traceback" not in text2 and len(_rows(out)) == len(rows)


HOLDING_RUN = """
import sys, time
from pathlib import Path
from protomdm.jobs.folder import localize_folder
from protomdm.jobs.localize import LocalizeJob

ckpt, src, out, marker = sys.argv[1:5]
real = LocalizeJob.write

def waiting(self, *args):
    Path(marker + ".started").touch()
    while not Path(marker + ".go").exists():  # hold the folder until the test has tried a second run
        time.sleep(0.05)
    return real(self, *args)

LocalizeJob.write = waiting
res = localize_folder(LocalizeJob.load(ckpt, method="upsample"), src, out, progress=False)
print(res.done, res.failed)
"""


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path, folder, grey_ckpt, capsys):
    import subprocess
    import sys
    import time

    out, marker = tmp_path / "out", tmp_path / "marker"
    first = subprocess.Popen([sys.executable, "-c", HOLDING_RUN, grey_ckpt, folder, out, marker],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.with_suffix(".started").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        for extra in ([], ["--resume"], ["--overwrite"]):
            code, text = _cli(capsys, "localize", "--ckpt", grey_ckpt, "--input", folder, "--out", out,
                              "--method", "upsample", *extra, *FAST)
            assert code == 2 and "another protomdm run is writing to" in text and text.count("\n") == 1, text
    finally:
        marker.with_suffix(".go").touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0 and stdout.split() == ["4", "1"], stderr  # the first run is untouched
    rows = _rows(out)
    assert sorted(r["status"] for r in rows) == ["failed", "ok", "ok", "ok", "ok"]
    assert {p.name for p in out.iterdir() if p.is_dir()} == {r["output"] for r in rows if r["status"] == "ok"}
