"""Hostile and careless input: every case is one line on stderr and exit status 2, never a traceback, and nothing
the user gave is changed. (The folder-run cases, where the run goes on, are in test_batch.py.)"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image

from protomdm.cli import main
from protomdm.data.nih import read_boxes
from protomdm.errors import UserError
from protomdm.models import save_checkpoint

NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
BOMB = "".join(f"{k}: &{k} [{', '.join(['*' + p] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, k in zip([""] + list("abcdefgh"), "abcdefghi")) + "lr: *i\n"


@pytest.fixture
def files(tmp_path):
    ckpt = save_checkpoint(tiny_model(img_size=(32, 32)), tmp_path / "m.pt")
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    return tmp_path, ckpt


def _corrupt(ckpt, kind):
    import zipfile

    data = bytearray(ckpt.read_bytes())
    if kind == "crc":  # flip bytes of the stored pickle: its CRC no longer matches
        with zipfile.ZipFile(ckpt) as z:
            info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
        h = info.header_offset  # the local header's own name and extra lengths (the extra pads for alignment)
        start = h + 30 + int.from_bytes(data[h + 26:h + 28], "little") + int.from_bytes(data[h + 28:h + 30], "little")
        data[start:start + 4] = bytes(255 - b for b in data[start:start + 4])
    else:  # the central directory cut off
        data = data[:-60]
    ckpt.write_bytes(bytes(data))
    return ckpt


CASES = {
    "checkpoint bad CRC": lambda d, c: ["localize", "--ckpt", _corrupt(c, "crc"), "--image", d / "a.png", "--out", d / "o", "--quiet"],
    "checkpoint no directory": lambda d, c: ["localize", "--ckpt", _corrupt(c, "cd"), "--image", d / "a.png", "--out", d / "o", "--quiet"],
    "config a list": lambda d, c: ["train", "--config", _write(d / "l.yaml", "- 1\n- 2\n"), "--out", d / "r", "--quiet"],
    "config missing": lambda d, c: ["train", "--config", d / "nope.yaml", "--out", d / "r", "--quiet"],
    "config not UTF-8": lambda d, c: ["train", "--config", _write(d / "u.yaml", b"seed: \xff\xfe\n"), "--out", d / "r", "--quiet"],
    "config YAML bomb": lambda d, c: ["localize", "--ckpt", c, "--image", d / "a.png", "--out", d / "o",
                                      "--mdm-config", _write(d / "bomb.yaml", BOMB)],
    "device mps": lambda d, c: ["localize", "--ckpt", c, "--image", d / "a.png", "--out", d / "o", "--device", "mps"],
    "device meta": lambda d, c: ["evaluate", "--dataset", "synthetic", "--ckpt", c, "--out", d / "e", "--device", "meta"],
    "init-model under a file": lambda d, c: ["init-model", "--model", "protopnet", "--classes", "a,b", "--backbone",
                                             "tiny", "--out", d / "a.png" / "m.pt"],
    "train --out a file": lambda d, c: ["train", "--config", _write(d / "t.yaml", "seed: 1\n"), "--out", d / "a.png"],
    "train --out below a file": lambda d, c: ["train", "--config", _write(d / "t.yaml", "seed: 1\n"), "--out",
                                              d / "a.png" / "run", "--quiet"],
    "train --stop-after -1": lambda d, c: ["train", "--config", _write(d / "t.yaml", "seed: 1\n"), "--out", d / "r",
                                           "--stop-after", "-1"],
    "deletion steps 0": lambda d, c: ["evaluate", "--dataset", "synthetic", "--ckpt", c, "--out", d / "e",
                                      "--deletion-steps", "0"],
    "lr inf": lambda d, c: ["localize", "--ckpt", c, "--image", d / "a.png", "--out", d / "o", "--lr", "inf"],
    "lambda nan": lambda d, c: ["localize", "--ckpt", c, "--image", d / "a.png", "--out", d / "o", "--lambda", "nan"],
    "empty --out": lambda d, c: ["localize", "--ckpt", c, "--image", d / "a.png", "--out", ""],
}


def _write(path, content):
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_and_exit_2(case, files, capsys):
    d, ckpt = files
    args = [str(a) for a in CASES[case](d, ckpt)]
    inputs = {p: p.read_bytes() for p in d.iterdir() if p.is_file()}
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("protomdm "), err
    assert len(err) < 600, err  # the alias bomb is never expanded into the message
    assert {p: p.read_bytes() for p in inputs} == inputs  # nothing the user gave was changed
    assert not (d / "o").exists() and not (d / "r" / "last.pt").exists()


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    from protomdm.explain.mdm import load_mdm_config

    assert load_mdm_config(_write(tmp_path / "m.yaml", "lr: 1e-3\nlambda_l1: 5e-3\n")).lr == 1e-3


@pytest.mark.parametrize("content,encoding", [("a.png,Mass,1,2,3,4\n", "utf-8-sig"), ("a.png,Mass,1,2,3,4\n", "utf-16"),
                                              ("caf\xe9.png,Mass,1,2,3,4\n", "latin-1")])
def test_nih_box_lists_as_spreadsheets_save_them(tmp_path, content, encoding):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_bytes((NIH_HEADER + content).encode(encoding))
    (box,) = read_boxes(p)
    assert box.finding == "Mass" and (box.x, box.y, box.w, box.h) == (1, 2, 3, 4)


@pytest.mark.parametrize("values", ["nan,2,3,4", "1,inf,3,4"])
def test_nih_box_values_must_be_finite(tmp_path, values):
    p = _write(tmp_path / "BBox_List_2017.csv", NIH_HEADER + f"a.png,Mass,{values}\n")
    with pytest.raises(UserError, match="line 2: box values must be finite"):
        read_boxes(p)


def test_resume_refuses_other_settings_and_a_foreign_results_file(files, capsys):
    d, ckpt = files
    inputs = d / "in"
    inputs.mkdir()
    shutil.copy(d / "a.png", inputs / "a.png")
    base = ["localize", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(d / "run"), "--method", "upsample",
            "--quiet"]
    assert main(base) in (0, 1)
    capsys.readouterr()
    assert main([*base, "--resume", "--percentile", "80"]) == 2
    err = capsys.readouterr().err
    assert "percentile was 90.0, now 80.0" in err and err.count("\n") == 1
    (d / "run" / "results.csv").write_bytes(b"input,status\n\xff\xfe,ok\n")
    assert main([*base, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "not a CSV table protomdm wrote" in err and "Traceback" not in err


def test_outputs_are_readable_by_others(files, capsys):
    d, ckpt = files
    old = os.umask(0o022)
    try:
        assert main(["localize", "--ckpt", str(ckpt), "--image", str(d / "a.png"), "--out", str(d / "o"), "--method",
                     "upsample", "--quiet"]) in (0, 1)
    finally:
        os.umask(old)
    for p in (d / "o").iterdir():
        assert p.stat().st_mode & 0o044 == 0o044, p.name


@pytest.mark.parametrize("name", ["slope_nan.dcm", "width_nan.dcm", "slope_abc.dcm", "frames_abc.dcm",
                                  "voi_lut_short.dcm", "no_study_uid.dcm"])
def test_bad_dicom_alone_is_one_line(name, files, capsys):
    from test_batch import _bad_inputs

    d, _ = files
    (d / "in").mkdir()
    _bad_inputs(d / "in")
    ckpt = save_checkpoint(tiny_model("xprotonet", in_channels=1, mean=(0.5,), std=(0.25,)), d / "g.pt")
    capsys.readouterr()
    code = main(["localize", "--ckpt", str(ckpt), "--image", str(d / "in" / name), "--method", "upsample", "--out",
                 str(d / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and name in err, err


def test_malformed_pixel_spacing_is_null_not_zero(files, capsys):
    import json

    from test_batch import _bad_inputs

    d, _ = files
    (d / "in").mkdir()
    _bad_inputs(d / "in")
    ckpt = save_checkpoint(tiny_model("xprotonet", in_channels=1, mean=(0.5,), std=(0.25,)), d / "g.pt")
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(d / "in" / "spacing_one.dcm"), "--method",
                 "upsample", "--out", str(d / "o"), "--quiet"]) in (0, 1)
    rec = json.loads(next((d / "o").glob("*_localization.json")).read_text())
    assert rec["pixel_spacing"] is None


def test_huge_npy_header_is_refused_before_allocation(tmp_path):
    from protomdm.data.images import read_image
    from protomdm.errors import ImageError

    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
    header += " " * (117 - len(header)) + "\n"
    p = tmp_path / "bomb.npy"
    p.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    with pytest.raises(ImageError, match=r"too large \(\(100000, 100000\)\)"):
        read_image(p)  # a 229-byte file; np.load would have asked for 37 GiB


def test_nih_ground_truth_no_model_class_matches_is_counted_and_named(tmp_path, capsys):
    from conftest import nih_copy as _nih_copy

    root = _nih_copy(tmp_path, ["a.png,Infiltrate,0,0,512,512\n", "a.png,Nodule,10,10,50,50\n",
                                "b.png,Nodule,0,0,100,100\n"])
    model = tiny_model(class_names=("Infiltrate", "Mass"), in_channels=1, mean=(0.5,), std=(0.25,))
    ckpt = save_checkpoint(model, tmp_path / "nih.pt")
    code = main(["evaluate", "--dataset", "nih", "--root", str(root), "--ckpt", str(ckpt), "--methods", "upsample",
                 "--no-faithfulness", "--out", str(tmp_path / "e"), "--quiet"])
    assert code == 0
    skipped = (tmp_path / "e" / "skipped.txt").read_text()
    assert "2 box(es) of Nodule, which is not a class of this model" in skipped
    import csv

    with open(tmp_path / "e" / "results.csv", newline="") as f:
        assert {r["finding"] for r in csv.DictReader(f)} == {"Infiltrate"}  # the box list's spelling matched


HOSTILE_CELLS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx",
                 "'=already quoted", "'", "-0.5", "+3", "1e-3", "-inf", "plain", ""]


def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_read_back(tmp_path):
    import csv

    from protomdm.files import read_csv, write_csv

    path = write_csv(tmp_path / "t.csv", ["=col", "value"], [{"=col": v, "value": v} for v in HOSTILE_CELLS])
    with open(path, newline="") as f:
        raw = list(csv.reader(f))
    formulas = [c for row in raw for c in row if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert formulas == ["-0.5", "-0.5", "+3", "+3", "-inf", "-inf"]  # numbers only
    assert raw[0] == ["'=col", "value"]
    assert read_csv(path) == [{"=col": v, "value": v} for v in HOSTILE_CELLS]


def test_a_folder_run_neutralises_hostile_file_names_and_resumes_them(tmp_path, capsys):
    import csv

    ckpt = save_checkpoint(tiny_model(img_size=(32, 32)), tmp_path / "m.pt")
    src = tmp_path / "in"
    src.mkdir()
    names = ["=1+1.png", "@SUM(A1).png", "-2+3.png"]
    for n in names:
        Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(src / n)
    args = ["localize", "--ckpt", ckpt, "--input", src, "--out", tmp_path / "o", "--method", "upsample", "--quiet"]
    assert main([str(a) for a in args]) == 0
    with open(tmp_path / "o" / "results.csv", newline="") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], cells
    capsys.readouterr()
    assert main([str(a) for a in args + ["--resume"]]) == 0  # read back as the same names: nothing to redo
    assert "0 localized, 0 failed, 3 already done" in capsys.readouterr().out


HOLD_LOCK = """
import sys, time
from pathlib import Path
from filelock import FileLock
with FileLock(Path(sys.argv[1]) / ".protomdm.lock"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""


@pytest.mark.parametrize("command", ["train", "evaluate", "report"])
def test_every_run_folder_is_refused_while_another_process_holds_it(command, files, capsys):
    import subprocess
    import sys

    d, ckpt = files
    out = d / "busy"
    out.mkdir()
    src = d / "src"
    src.mkdir()
    shutil.copy(d / "a.png", src / "a.png")
    config = Path(__file__).resolve().parents[2] / "configs" / "synthetic_protopnet.yaml"
    args = {"train": ["train", "--config", config, "--out", out],
            "evaluate": ["evaluate", "--dataset", "synthetic", "--ckpt", ckpt, "--out", out, "--limit", "1",
                         "--methods", "upsample"],
            "report": ["localize", "--report", "--ckpt", ckpt, "--input", src, "--out", out, "--method", "upsample"]}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, out], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code = main([str(a) for a in args[command] + ["--quiet"]])
    finally:
        holder.communicate("")
    err = capsys.readouterr().err
    assert code == 2 and "another protomdm run is writing to" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == [".protomdm.lock"]  # nothing written beside the lock


@pytest.mark.parametrize("shape", [(1, 500), (3, 4000), (4000, 8), (1, 1)])
@pytest.mark.parametrize("kind", ["png", "dcm"])
def test_thin_and_extreme_aspect_images_are_localized_and_reported(shape, kind, files, capsys):
    from dicom_factory import make_dicom

    d, ckpt = files
    pixels = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    src = d / f"odd.{kind}"
    if kind == "png":
        Image.fromarray(pixels).save(src)
    else:
        make_dicom(src, pixels, bits_stored=8)
    for extra in ([], ["--report"]):
        out = d / f"out{len(extra)}"
        code = main([str(a) for a in ["localize", "--ckpt", ckpt, "--image", src, "--out", out, "--method",
                                      "upsample", "--quiet", *extra]])
        assert code == 0, capsys.readouterr().err
        written = {p.name.split("_", 1)[-1]: p for p in out.iterdir()}
        assert all(p.stat().st_size > 0 for p in written.values())
        if not extra:
            with Image.open(written["mask.png"]) as m:
                assert m.size == (shape[1], shape[0])  # the mask is at the original size, however thin


def test_pixel_data_far_beyond_the_header_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from dicom_factory import make_dicom

    from protomdm.data import dicom as D
    from protomdm.errors import ImageError

    src = make_dicom(tmp_path / "lying.dcm", np.zeros((64, 64), np.uint16), bits_stored=12,
                     pixel_data=b"\0" * (64 << 20))  # 64 MB behind a 64 x 64 header
    decoded = []
    monkeypatch.setattr(D, "_decode", lambda *a: decoded.append(a))
    with pytest.raises(ImageError, match=r"pixel data of 67108864 bytes is far more than its header's 64x64 image "
                                         r"needs \(8192 bytes\)"):
        D.read_dicom(src)
    assert decoded == []
    ok = make_dicom(tmp_path / "padded.dcm", np.zeros((64, 64), np.uint16), bits_stored=12,
                    pixel_data=b"\0" * (64 * 64 * 2 + 2))  # a writer's padding is not refused
    monkeypatch.undo()
    assert D.read_dicom(ok).pixels.shape == (64, 64)


def test_large_images_are_coloured_after_subsampling(monkeypatch):
    """The case report's panel of an 8192 x 8192 scan colours a subsampled copy: no full-size float array."""
    import tracemalloc

    from protomdm.report.html import overlay_rgb

    pixels = np.zeros((8192, 8192), np.float32)  # 268 MB
    tracemalloc.start()
    try:
        panel = overlay_rgb(pixels, np.ones((64, 64), np.float32), [(0, 0, 8192, 1)], side=320)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert panel.shape == (320, 320, 3) and peak < 64e6, peak  # it was 3.9 GB (float64 RGBA of the full image)


def _edited_checkpoint(d, edit):
    model = tiny_model(img_size=(32, 32))
    ckpt = save_checkpoint(model, d / "edited.pt")
    obj = torch.load(ckpt, weights_only=True)
    obj["extra"]["push"] = [{"prototype": j, "class_index": model.prototype_class(j), "image": j, "similarity": 1.0,
                             "source": "a.png", "dataset": "table",
                             "thumbnail": torch.zeros(1, 8, 8, dtype=torch.uint8)} for j in range(model.num_prototypes)]
    edit(obj)
    torch.save(obj, ckpt)
    return ckpt


def _nan_weights(o):
    o["state_dict"]["last_layer.weight"][0, 0] = float("nan")


BAD_CHECKPOINTS = {
    "config missing": (lambda o: o.pop("config"), "its model config is missing"),
    "config a list": (lambda o: o.update(config=[1, 2]), "its model config is not a mapping"),
    "extra a list": (lambda o: o.update(extra=[1]), "its extra data is a list, not a mapping"),
    "no class_names": (lambda o: o["config"].pop("class_names"), "its config names no classes"),
    "huge prototypes_per_class": (lambda o: o["config"].update(prototypes_per_class=10**7),
                                  "prototypes_per_class must be 1 .. 1000"),
    "huge prototype_dim": (lambda o: o["config"].update(prototype_dim=10**6), "prototype_dim must be 1 .. 8192"),
    "huge img_size": (lambda o: o["config"].update(img_size=[100000, 100000]), "img_size must be [H, W] in 8 .. 4096"),
    "shapes off the config": (lambda o: o["config"].update(prototype_dim=17),
                              "prototype_vectors is (6, 16, 1, 1), the config's model needs (6, 17, 1, 1)"),
    "NaN weights": (_nan_weights, "hold NaN or infinite values (last_layer.weight)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_malformed_checkpoints_are_one_line(case, files, capsys):
    d, _ = files
    edit, message = BAD_CHECKPOINTS[case]
    ckpt = _edited_checkpoint(d, edit)
    for command in (["localize", "--image", d / "a.png", "--out", d / "o"], ["prototypes", "--out", d / "g"]):
        code = main([str(a) for a in [command[0], "--ckpt", ckpt, *command[1:], "--method", "upsample", "--quiet"]])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


BAD_RECORDS = {  # each breaks the first of the push records
    "string numbers": (lambda rs: rs[0].update(similarity="0.5"), "similarity '0.5' is not a finite number"),
    "missing prototype": (lambda rs: rs[0].pop("prototype"), "prototype None is not 0 .. 5"),
    "thumbnail 2-D": (lambda rs: rs[0].update(thumbnail=rs[0]["thumbnail"][0]), "thumbnail (8, 8) is not a"),
    "thumbnail 8000^2": (lambda rs: rs[0].update(thumbnail=torch.zeros(1, 8000, 8000, dtype=torch.uint8)),
                         "thumbnail (1, 8000, 8000) is not a"),
    "not a mapping": (lambda rs: rs.__setitem__(0, "x"), "a str, not a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_malformed_push_records_are_left_out_and_said(case, files, capsys):
    d, _ = files
    edit, message = BAD_RECORDS[case]
    break_first = lambda o: edit(o["extra"]["push"])  # noqa: E731
    ckpt = _edited_checkpoint(d, break_first)
    code = main(["prototypes", "--ckpt", str(ckpt), "--out", str(d / "g"), "--method", "upsample"])
    err = capsys.readouterr().err
    assert code == 0 and f"1 of 6 push records are malformed and ignored (record 0: {message}" in err, err
    assert "Traceback" not in err and (d / "g" / "gallery.html").is_file()
