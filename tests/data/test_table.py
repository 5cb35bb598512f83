"""Your own data: the table dataset (labels as lists or 0/1 columns, boxes in both formats, masks, DICOM images, a
grouped split), the RSNA and VinDr recipes on miniature copies in the publishers' formats, the image cache, the bad
input a table can hold, and ProtoPNet on multi-label data."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from dicom_factory import make_dicom
from PIL import Image

from protomdm.cli import main
from protomdm.config import ModelConfig
from protomdm.data import dataset_source
from protomdm.data.cache import ImageCache
from protomdm.data.config import DataConfig
from protomdm.data.sources import EvalOptions
from protomdm.data.synthetic import write_table
from protomdm.data.table import read_table
from protomdm.errors import UserError
from protomdm.models.losses import LossConfig, protopnet_loss

CLASSES = ("disk", "square", "cross")


def model_cfg(classes=CLASSES, channels=3, size=32, architecture="protopnet", **kw) -> ModelConfig:
    return ModelConfig(architecture=architecture, backbone="tiny", class_names=tuple(classes),
                       prototypes_per_class=2, prototype_dim=8, img_size=(size, size), in_channels=channels,
                       mean=(0.5,) * channels, std=(0.25,) * channels, **kw)


def png(path: Path, h=40, w=50, value=128, channels=1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((h, w) if channels == 1 else (h, w, 3), value, np.uint8)
    Image.fromarray(a).save(path)
    return path


def data(root, **kw) -> DataConfig:
    return DataConfig(dataset="table", root=str(root), cache_dir=kw.pop("cache_dir", "none"), **kw)


def test_labels_as_lists_and_as_01_columns_read_the_same(tmp_path):
    for i in range(4):
        png(tmp_path / f"i{i}.png")
    (tmp_path / "lists.csv").write_text("path,labels\ni0.png,disk|cross\ni1.png,\ni2.png,No Finding\ni3.png,Square\n")
    (tmp_path / "hot.tsv").write_text("path\tdisk\tsquare\tcross\ni0.png\t1\t0\t1\ni1.png\t0\t0\t0\n"
                                      "i2.png\t0\t0\t0\ni3.png\t0\t1.0\t0\n")
    a = read_table(data(tmp_path, table="lists.csv"), CLASSES)
    b = read_table(data(tmp_path, table="hot.tsv"), CLASSES)
    assert [r.labels for r in a.rows] == [r.labels for r in b.rows] == [{0, 2}, set(), set(), {1}]
    assert a.multilabel and {r.split for r in a.rows} == {"train", "test"}


def test_boxes_in_both_formats_and_masks_give_the_same_ground_truth(tmp_path):
    png(tmp_path / "a.png", h=40, w=80)
    (tmp_path / "t.csv").write_text("path,labels,split\na.png,disk|square,test\n")
    (tmp_path / "xyxy.csv").write_text("image,label,x0,y0,x1,y1\na.png,disk,20,10,40,30\n")
    (tmp_path / "xywh.csv").write_text("image,label,x,y,w,h\na.png,disk,20,10,20,20\n")
    mask = np.zeros((40, 80), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", mask > 0)
    (tmp_path / "masks.csv").write_text("image,label,mask\na.png,square,m.png\n")
    (tmp_path / "masks_npy.csv").write_text("image,label,mask\na.png,square,m.npy\n")
    cfg = model_cfg(size=32)
    truths = []
    for extra in (dict(boxes="xyxy.csv"), dict(boxes="xywh.csv", box_format="xywh"), dict(masks="masks.csv"),
                  dict(masks="masks_npy.csv")):
        (s,) = dataset_source(data(tmp_path, table="t.csv", **extra)).evaluation(cfg, EvalOptions())
        (f,) = s.findings
        truths.append(f.truth)
        assert s.pixels.shape == (3, 32, 32)
    expect = np.zeros((32, 32), bool)
    expect[8:24, 8:16] = True  # x 20..40 of 80 -> 8..16 of 32; y 10..30 of 40 -> 8..24
    for t in truths:
        assert np.array_equal(t, expect)


def test_dicom_images_and_a_grouped_split_keep_patients_apart(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["path,labels,patient"]
    for i in range(20):
        make_dicom(tmp_path / f"d{i}.dcm", (rng.random((30, 30)) * 4095).astype(np.uint16), bits_stored=12)
        lines.append(f"d{i}.dcm,{CLASSES[i % 3]},P{i // 4}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    d = data(tmp_path, table="t.csv", test_fraction=0.4, seed=3)
    table = read_table(d, CLASSES)
    by_patient = {}
    for r in table.rows:
        by_patient.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())  # no patient on both sides
    assert sum(s == {"test"} for s in by_patient.values()) == 2  # 40% of 5 patients
    train, test, multilabel = dataset_source(d).training(model_cfg(channels=1))
    assert not multilabel and len(train) + len(test) == 20
    x, y, _ = train[0]
    assert x.shape == (1, 32, 32) and 0 <= float(x.min()) <= float(x.max()) <= 1 and isinstance(y, int)


def test_rsna_pneumonia_recipe(tmp_path):
    """stage_2_train_labels.csv as Kaggle ships it: a row per box, negatives with empty boxes, DICOMs by patientId."""
    rng = np.random.default_rng(1)
    ids = [f"{k:08x}-aaaa-bbbb-cccc-{k:012x}" for k in range(6)]
    rows = ["patientId,x,y,width,height,Target"]
    (tmp_path / "stage_2_train_images").mkdir()
    for k, pid in enumerate(ids):
        make_dicom(tmp_path / "stage_2_train_images" / f"{pid}.dcm", (rng.random((64, 64)) * 255).astype(np.uint8),
                   bits_stored=8)
        if k % 2:
            rows += [f"{pid},10.0,12.0,20.0,16.0,1", f"{pid},40.0,30.0,12.0,20.0,1"]
        else:
            rows.append(f"{pid},,,,,0")
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    d = DataConfig(dataset="table", root=str(tmp_path), table="stage_2_train_labels.csv",
                   path_format="stage_2_train_images/{}.dcm", columns={"path": "patientId", "Lung Opacity": "Target",
                                                                        "image": "patientId", "w": "width",
                                                                        "h": "height"},
                   boxes="stage_2_train_labels.csv", box_format="xywh", test_fraction=0.5, cache_dir="none")
    table = read_table(d, ("Lung Opacity",))
    assert len(table.rows) == 6 and sum(bool(r.labels) for r in table.rows) == 3
    assert sum(map(len, table.boxes.values())) == 6
    cfg = model_cfg(("Lung Opacity",), channels=1, size=32)
    samples = list(dataset_source(d).evaluation(cfg, EvalOptions()))
    for s in samples:
        (f,) = s.findings
        assert len(f.boxes) == 2 and f.truth.sum() > 0


def test_vindr_cxr_recipe(tmp_path):
    """annotations_train.csv as VinDr ships it: a row per radiologist's box, "No finding" rows without a box."""
    rng = np.random.default_rng(2)
    rows = ["image_id,rad_id,class_name,x_min,y_min,x_max,y_max"]
    (tmp_path / "train").mkdir()
    for k in range(4):
        iid = f"{k:032x}"
        make_dicom(tmp_path / "train" / f"{iid}.dicom", (rng.random((64, 64)) * 4095).astype(np.uint16),
                   bits_stored=12)
        if k < 2:
            rows += [f"{iid},R8,Cardiomegaly,10,30,50,60", f"{iid},R9,Cardiomegaly,12,28,48,62",
                     f"{iid},R9,Aortic enlargement,30,5,40,20"]
        else:
            rows += [f"{iid},R8,No finding,,,,", f"{iid},R10,No finding,,,,"]
    (tmp_path / "annotations_train.csv").write_text("\n".join(rows) + "\n")
    d = DataConfig(dataset="table", root=str(tmp_path), table="annotations_train.csv", path_format="train/{}.dicom",
                   columns={"path": "image_id", "labels": "class_name", "image": "image_id", "label": "class_name",
                            "x0": "x_min", "y0": "y_min", "x1": "x_max", "y1": "y_max"},
                   boxes="annotations_train.csv", other_labels="ignore", test_fraction=0.5, seed=0,
                   cache_dir="none")
    table = read_table(d, ("Cardiomegaly",))
    assert len(table.rows) == 4 and [len(r.labels) for r in table.rows] == [1, 1, 0, 0]
    assert [len(table.boxes[k]) for k in sorted(table.boxes)] == [2, 2]  # two radiologists' boxes each
    with pytest.raises(UserError, match=r"annotations_train.csv line 4: label 'Aortic enlargement' is not one of"):
        read_table(dataclasses.replace(d, other_labels="error"), ("Cardiomegaly",))


def test_bad_tables_are_one_clear_line(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    cases = {
        "path,labels\na.png,disk\nb.png,tumour\n": r"t.csv line 3: label 'tumour' is not one of the model's classes",
        "file,diagnosis\na.png,disk\n": r"t.csv has no 'path' column .*its header has 2 columns",
        "path,diagnosis\na.png,disk\n": r"t.csv has no label column.*its header has 2 columns",
        "path,labels,split\na.png,disk,train\nb.png,cross,train\n": r"the test split is empty",
        "path,labels,split\na.png,disk,train\na.png,disk,test\n": r"t.csv lines 2 and 3: image 'a.png' is given two splits",
        "path,labels,split\na.png,disk,dev\n": r"t.csv line 2: split 'dev' is none of train, val \(valid, validate\) or test",
    }
    for text, message in cases.items():
        (tmp_path / "t.csv").write_text(text)
        with pytest.raises(UserError, match=message):
            dataset_source(data(tmp_path, table="t.csv")).training(model_cfg())
    (tmp_path / "t.csv").write_text("path,labels,split\na.png,disk,test\nb.png,cross,train\n")
    for boxes, message in {"image,label,x0,y0,x1,y1\na.png,disk,10,10,5,20\n": r"b.csv line 2: box .* negative or zero",
                           "image,label,x0,y0,x1,y1\nc.png,disk,1,1,5,5\n": r"b.csv line 2: image 'c.png' is not in the",
                           "image,label,x,y\na.png,disk,1,1\n": r"b.csv lacks the column\(s\) x0, y0, x1, y1"}.items():
        (tmp_path / "b.csv").write_text(boxes)
        with pytest.raises(UserError, match=message):
            read_table(data(tmp_path, table="t.csv", boxes="b.csv"), CLASSES)
    (tmp_path / "b.csv").write_text("image,label,x0,y0,x1,y1\na.png,disk,10,10,60,20\n")  # the image is 50 wide
    (s,) = dataset_source(data(tmp_path, table="t.csv", boxes="b.csv")).evaluation(model_cfg(), EvalOptions())
    assert "b.csv line 2: box (10, 10, 60, 20) lies outside the 50x40 image a.png" in s.reason


def test_missing_unreadable_and_duplicate_rows_are_skipped_counted_and_listed(tmp_path, caplog):
    for i in range(6):
        png(tmp_path / f"i{i}.png", value=40 * i)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "t.csv").write_text("path,labels,split\n" + "".join(f"i{i}.png,disk,{'test' if i > 3 else 'train'}\n"
                                                                   for i in range(6))
                                    + "i1.png,disk,train\nmissing.png,square,train\nbroken.png,cross,train\n")
    with caplog.at_level(logging.INFO, logger="protomdm.data"):
        train, test, _ = dataset_source(data(tmp_path, table="t.csv", cache_dir=str(tmp_path / "cache"))
                                        ).training(model_cfg())
    out = caplog.text
    assert len(train) == 4 and len(test) == 2  # the run goes on with the readable ones
    assert "train: skipped 2 unreadable or missing image(s)" in out and "missing.png" in out and "broken.png" in out
    assert "1 duplicate row(s) dropped (line 8)" in out


def test_the_cache_rereads_a_changed_image(tmp_path):
    p = png(tmp_path / "a.png", value=10)
    cache = ImageCache(tmp_path / "cache", [p], (8, 8), 1)
    assert cache.prepare() == {} and float(cache[0].mean()) == pytest.approx(10 / 255, abs=1e-6)
    again = ImageCache(tmp_path / "cache", [p], (8, 8), 1)
    calls = []
    again.prepare(read=lambda path: calls.append(path) or torch.zeros(1, 8, 8))
    assert calls == []  # unchanged: nothing read
    png(p, value=200)
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    fresh = ImageCache(tmp_path / "cache", [p], (8, 8), 1)
    assert fresh.prepare() == {} and float(fresh[0].mean()) == pytest.approx(200 / 255, abs=1e-6)
    p.unlink()
    assert "no such file" in ImageCache(tmp_path / "cache", [p], (8, 8), 1).prepare()[0]


def test_protopnet_multilabel_loss_is_the_single_label_loss_on_one_label_data():
    model = tiny_model("protopnet", seed=4, img_size=(32, 32))
    x = torch.rand(5, 3, 32, 32)
    y = torch.tensor([0, 2, 1, 1, 0])
    coefs = LossConfig()
    _, single, _ = protopnet_loss(model, x, y, coefs)
    _, multi, _ = protopnet_loss(model, x, torch.nn.functional.one_hot(y, 3).float(), coefs)
    for k in ("cluster", "separation", "l1"):
        assert multi[k] == pytest.approx(single[k], rel=1e-6)
    assert "bce" in multi and "ce" in single
    two = torch.tensor([[1.0, 1, 0]])  # two findings: the mean of each present class's nearest own prototype
    _, parts, _ = protopnet_loss(model, x[:1], two, coefs)
    with torch.no_grad():
        d = model.outputs(x[:1]).min_distances[0]
    own = [min(float(d[j]) for j in model.prototypes_of_class(c)) for c in (0, 1)]
    assert parts["cluster"] == pytest.approx(np.mean(own), rel=1e-5)
    assert parts["separation"] == pytest.approx(min(float(d[j]) for j in model.prototypes_of_class(2)), rel=1e-5)


def test_train_and_evaluate_a_table_end_to_end(tmp_path, capsys):
    """A synthetic collection written as files, trained as a multi-label ProtoPNet with `protomdm train`, then
    evaluated with `protomdm evaluate --dataset table`: Dice per finding, MDM beside upsampling."""
    import yaml

    write_table(tmp_path / "col", 48, size=32, scale=2)
    cfg = {"model": {"architecture": "protopnet", "backbone": "tiny", "class_names": list(CLASSES),
                     "prototypes_per_class": 2, "prototype_dim": 8, "img_size": [32, 32]},
           "data": {"dataset": "table", "root": str(tmp_path / "col"), "table": "labels.csv", "boxes": "boxes.csv",
                    "batch_size": 16, "cache_dir": str(tmp_path / "cache")},
           "optim": {"warm_epochs": 1, "joint_epochs": 1, "last_layer_epochs": 1}, "device": "cpu"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "test_mean_auroc" in (tmp_path / "run" / "log.csv").read_text()
    code = main(["evaluate", "--dataset", "table", "--config", str(tmp_path / "c.yaml"), "--ckpt",
                 str(tmp_path / "run" / "best.pt"), "--methods", "upsample,mdm", "--steps", "30", "--limit", "3",
                 "--no-faithfulness", "--out", str(tmp_path / "e"), "--quiet"])
    assert code == 0
    md = (tmp_path / "e" / "summary.md").read_text()
    assert "3 images evaluated" in md and "| mdm |" in md and "| upsample |" in md


def test_protopnet_trains_on_multilabel_data(tmp_path):
    """ProtoPNet on the synthetic multi-label findings: mean AUROC >= 0.9, and its checkpoint says multi-label."""
    from protomdm import load_model
    from protomdm.training import train
    from protomdm.training.config import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[2] / "configs" / "synthetic_protopnet.yaml")
    cfg.model = dataclasses.replace(cfg.model, img_size=(48, 48), prototype_dim=16)
    cfg.data = dataclasses.replace(cfg.data, multilabel=True, num_train=400, num_test=100)
    cfg.optim = dataclasses.replace(cfg.optim, warm_epochs=1, joint_epochs=12, last_layer_epochs=2,
                                    push_epochs=())
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.metric_name == "test_mean_auroc" and res.best_metric >= 0.9, res.best_metric
    model = load_model(tmp_path / "run" / "best.pt")
    assert model.config.multilabel and model.config.architecture == "protopnet"


def test_check_data_reads_a_table_as_training_would(tmp_path, capsys):
    write_table(tmp_path / "col", 8, size=32)
    (tmp_path / "c.yaml").write_text(f"data:\n  root: {tmp_path / 'col'}\n  table: labels.csv\n  boxes: boxes.csv\n")
    assert main(["check-data", "--dataset", "table", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "labels.csv: 8 images, 6 train / 2 test" in out and "8 of 8 found" in out and "complete" in out
    (tmp_path / "col" / "labels.csv").write_text("path,diagnosis\nimages/img00000.png,disk\n")
    assert main(["check-data", "--dataset", "table", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "labels.csv has no label column" in err and "its header has 2 columns" in err and "diagnosis" not in err


@pytest.mark.parametrize("path_format", ["{0}.png", "{}{}.png", "{x}.png", "{}.png}", "a.png"])
def test_path_format_must_hold_one_placeholder(tmp_path, path_format):
    with pytest.raises(Exception, match=r"data.path_format must hold one \{\} \(the path value\) and no other braces"):
        data(tmp_path, table="t.csv", path_format=path_format)


def test_a_duplicated_column_is_one_line_naming_its_place(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("path,labels,labels\na.png,disk,square\n")
    with pytest.raises(UserError, match=r"t.csv: 1 column name\(s\) appear twice in its header \(columns 2\)"):
        read_table(data(tmp_path, table="t.csv"), CLASSES)


def test_rows_whose_path_cannot_name_a_file_are_skipped_and_listed(tmp_path, capsys):
    for n in ("a", "b", "c", "d"):
        png(tmp_path / f"{n}.png")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    rows = ["a.png,disk,train", "b.png,square,train", "c.png,disk,test", "d.png,square,test",
            f"{'x' * 300}.png,disk,train", "nul\0.png,disk,train", "loop1,square,test"]
    (tmp_path / "t.csv").write_text("path,labels,split\n" + "\n".join(rows) + "\n")
    table = read_table(data(tmp_path, table="t.csv"), CLASSES)
    assert len(table.rows) == 5  # the loop names a file that cannot be read: skipped when it is read
    (note,) = table.notes
    assert "2 row(s) skipped" in note and "line 6 (a path component over 255 bytes)" in note
    assert "line 7 (a NUL byte in the path)" in note and "xxxx" not in note
    train, test, _ = dataset_source(data(tmp_path, table="t.csv")).training(model_cfg(channels=1))
    assert len(train) == 2 and len(test) == 2 and [k for k, _ in test.skipped] == ["loop1"]


@pytest.mark.parametrize("array,ok", [(np.ones(()), False), (np.ones(40), False), (np.ones((40, 50)), True),
                                      (np.ones((1, 40, 50)), True), (np.ones((40, 50, 3)), True),
                                      (np.ones((2, 3, 40, 50)), False), (np.ones((0, 50)), False)])
def test_npy_masks_of_every_dimension_are_read_or_refused_in_one_line(tmp_path, array, ok):
    from protomdm.data.table import read_mask

    np.save(tmp_path / "m.npy", array)
    if ok:
        assert read_mask(tmp_path / "m.npy").shape == (40, 50)
    else:
        with pytest.raises(UserError, match="a mask must be a 2-D array"):
            read_mask(tmp_path / "m.npy")


def test_an_npy_mask_whose_header_lies_is_refused_before_allocation(tmp_path):
    from protomdm.data.table import read_mask

    np.save(tmp_path / "m.npy", np.ones((40, 50)))
    raw = (tmp_path / "m.npy").read_bytes().replace(b"(40, 50)", b"(99999, 99999)")
    (tmp_path / "big.npy").write_bytes(raw)
    with pytest.raises(UserError, match="big.npy"):
        read_mask(tmp_path / "big.npy")
    (tmp_path / "short.npy").write_bytes((tmp_path / "m.npy").read_bytes().replace(b"(40, 50)", b"(40, 60)"))
    with pytest.raises(UserError, match="short.npy: not a readable mask"):
        read_mask(tmp_path / "short.npy")


def test_the_cli_prints_what_training_skipped(tmp_path, capsys):
    """The data sources log what the user should know (here: an image the table names but the folder lacks); the
    command line prints it, on stdout, even with --quiet."""
    for i in range(4):
        png(tmp_path / f"i{i}.png", value=60 * i, channels=3)
    (tmp_path / "t.csv").write_text("path,labels,split\n" + "".join(
        f"i{i}.png,{CLASSES[i % 2]},{'test' if i == 3 else 'train'}\n" for i in range(4)) + "gone.png,disk,train\n")
    (tmp_path / "c.yaml").write_text(
        f"model: {{architecture: protopnet, backbone: tiny, class_names: [{CLASSES[0]}, {CLASSES[1]}],"
        " prototypes_per_class: 1, prototype_dim: 8, img_size: [32, 32]}\n"
        f"data: {{dataset: table, root: {tmp_path}, table: t.csv, batch_size: 4, cache_dir: none}}\n"
        "optim: {warm_epochs: 1, joint_epochs: 0, last_layer_epochs: 0}\ndevice: cpu\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "train: skipped 1 unreadable or missing image(s): gone.png" in capsys.readouterr().out
