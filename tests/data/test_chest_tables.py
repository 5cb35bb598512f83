"""Chest X-ray label tables as their publishers ship them: CheXpert's (1, 0, -1, blank; U-Ones, U-Zeros,
U-Ignore; Frontal/Lateral; the patient only in the path), MIMIC-CXR-JPG's split file, and a Kaggle folder's val/."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_table import data, model_cfg, png

from protomdm.cli import main
from protomdm.data import dataset_source
from protomdm.data.table import TableDataset, read_table
from protomdm.errors import UserError
from protomdm.evaluation.metrics import auroc
from protomdm.models import build_model
from protomdm.models.losses import LossConfig, known_targets, masked_bce, protopnet_loss

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")
FINDINGS = ("Atelectasis", "Cardiomegaly", "Edema")


def chexpert_copy(root, patients=6):
    """A miniature CheXpert-v1.0-small: train.csv in the download's header, one frontal and one lateral view per
    study, labels in its 1.0 / 0.0 / -1.0 / blank cells."""
    base = root / "CheXpert-v1.0-small"
    lines = [CHEXPERT_HEADER]
    columns = CHEXPERT_HEADER.split(",")
    for p in range(1, patients + 1):
        for study in (1, 2):
            for view, kind in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
                rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study{study}/{view}.jpg"
                png(root / rel, h=20, w=24)
                cells = dict.fromkeys(columns, "")
                cells.update({"Path": rel, "Sex": "Female", "Age": "68", "Frontal/Lateral": kind,
                              "AP/PA": "AP" if kind == "Frontal" else "",
                              "Atelectasis": ["1.0", "-1.0", "0.0"][p % 3], "Cardiomegaly": ["", "1.0"][p % 2],
                              "Edema": "-1.0" if study == 2 else ""})
                lines.append(",".join(cells[c] for c in columns))
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    return dict(table="CheXpert-v1.0-small/train.csv", columns={"path": "Path"})


def test_uncertain_labels_under_each_policy_and_blank_cells_as_negative(tmp_path):
    keys = chexpert_copy(tmp_path)
    with pytest.raises(UserError, match=r"train.csv line \d+: column 'Atelectasis' holds '-1.0' \(uncertain\); "
                                         "say what it means with data.uncertain"):
        read_table(data(tmp_path, **keys), FINDINGS)
    tables = {p: read_table(data(tmp_path, uncertain=p, **keys), FINDINGS) for p in ("ones", "zeros", "ignore")}
    ones, zeros, ignore = (tables[p].rows for p in ("ones", "zeros", "ignore"))
    for a, b, c in zip(ones, zeros, ignore):
        p, study = int(a.key.split("patient")[1][:5]), int(a.key.split("study")[1][0])
        certain = {0} if p % 3 == 0 else set()
        certain |= {1} if p % 2 == 1 else set()  # blank Cardiomegaly (even patients) is negative
        unsure = ({0} if p % 3 == 1 else set()) | ({2} if study == 2 else set())
        assert a.labels == certain | unsure and b.labels == certain == c.labels
        assert c.uncertain == unsure and not a.uncertain and not b.uncertain
    # said once, with counts per finding
    notes = " ".join(tables["ignore"].notes)
    assert "uncertain (-1) cells, read as left out of the loss (U-Ignore): Atelectasis 8, Edema 12" in notes
    assert "blank cells, read as negative (not mentioned): Cardiomegaly 12, Edema 12" in notes


def test_u_ignore_leaves_the_finding_out_of_the_loss_and_the_auroc(tmp_path):
    keys = chexpert_copy(tmp_path)
    table = read_table(data(tmp_path, uncertain="ignore", **keys), FINDINGS)
    cfg = model_cfg(FINDINGS, channels=1, size=16, multilabel=True)
    ds = TableDataset(table.rows, cfg, True, None)
    y = ds.targets()
    assert torch.isnan(y).any() and torch.equal(torch.isnan(y[0]), torch.isnan(ds[0][1]))
    unknown = torch.isnan(y)
    logits = torch.randn(len(y), len(FINDINGS), requires_grad=True)
    loss = masked_bce(logits, y, known_targets(y), None)
    loss.backward()
    assert (logits.grad[unknown] == 0).all() and (logits.grad[~unknown] != 0).all()
    assert torch.isclose(loss, F.binary_cross_entropy_with_logits(logits[~unknown], y[~unknown]))
    model = build_model(cfg).eval()
    parts = protopnet_loss(model, torch.rand(len(y), 1, 16, 16), y, LossConfig(), pos_weight=None)[1]
    assert all(np.isfinite(v) for v in parts.values())
    # AUROC: a NaN label is neither positive nor negative
    scores = np.array([[0.9], [0.1], [0.5]])
    assert auroc(scores, np.array([[1.0], [0.0], [np.nan]]))[0] == 1.0
    assert auroc(scores, np.array([[1.0], [0.0], [0.0]]))[0] == 1.0
    assert auroc(scores, np.array([[1.0], [np.nan], [0.0]]))[0] == 1.0


def test_patients_from_chexpert_paths_are_never_split_and_the_frontal_filter(tmp_path):
    keys = chexpert_copy(tmp_path, patients=10)
    table = read_table(data(tmp_path, uncertain="zeros", views=("frontal",), **keys), FINDINGS)
    assert len(table.rows) == 20 and all("frontal" in r.key for r in table.rows)
    sides: dict[str, set[str]] = {}
    for r in table.rows:
        assert r.patient == r.key.split("/")[2]
        sides.setdefault(r.patient, set()).add(r.split)
    assert len(sides) == 10 and all(len(s) == 1 for s in sides.values())
    assert {s for v in sides.values() for s in v} == {"train", "test"}
    assert any("20 of 40 rows left out, not of the views frontal" in n for n in table.notes)
    assert any("patients read from the paths" in n and "10 patients" in n for n in table.notes)
    # the view from CheXpert's file names where there is no view column; a regex of the user's own
    (tmp_path / "no_view.csv").write_text("path,Atelectasis\n"
                                          "site-a/case7/img1_frontal.png,1\nsite-a/case7/img2_lateral.png,0\n"
                                          "site-b/case9/img3_frontal.png,0\n")
    for rel in ("site-a/case7/img1_frontal.png", "site-a/case7/img2_lateral.png", "site-b/case9/img3_frontal.png"):
        png(tmp_path / rel)
    t = read_table(data(tmp_path, table="no_view.csv", views=("frontal",), patient_pattern=r"(case\d+)/"),
                   ("Atelectasis",))
    assert [(r.key.split("/")[-1], r.patient) for r in t.rows] == [("img1_frontal.png", "case7"),
                                                                   ("img3_frontal.png", "case9")]
    with pytest.raises(UserError, match="data.patient_pattern 'nobody' matches none of no_view.csv's paths"):
        read_table(data(tmp_path, table="no_view.csv", patient_pattern="nobody"), ("Atelectasis",))


def test_check_data_and_training_read_blank_and_uncertain_cells_alike(tmp_path, capsys):
    keys = chexpert_copy(tmp_path)
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"data:\n  root: {tmp_path}\n  table: {keys['table']}\n  columns: {{path: Path}}\n"
                    "  uncertain: ignore\n  cache_dir: none\n")
    assert main(["check-data", "--dataset", "table", "--config", str(yaml)]) == 0
    out = capsys.readouterr().out
    assert "24 images" in out and "24 of 24 found" in out and "U-Ignore): Edema 12, Atelectasis 8" in out
    yaml.write_text(yaml.read_text().replace("  uncertain: ignore\n", ""))
    assert main(["check-data", "--dataset", "table", "--config", str(yaml)]) == 2
    assert "(uncertain); say what it means with data.uncertain: ones, zeros or ignore" in capsys.readouterr().err
    yaml.write_text(yaml.read_text() + "  uncertain: ones\n")
    (tmp_path / keys["table"]).write_text((tmp_path / keys["table"]).read_text().replace(",-1.0,", ",2,", 1))
    assert main(["check-data", "--dataset", "table", "--config", str(yaml)]) == 2
    assert "holds '2', not 1, 0, -1 or blank" in capsys.readouterr().err


MIMIC_SPLIT_HEADER = "dicom_id,study_id,subject_id,split"


def test_mimic_cxr_split_file_is_the_split(tmp_path):
    ids = [f"{k:08x}-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd" for k in range(6)]
    rows, split = ["path,Edema,Atelectasis,split_hint"], [MIMIC_SPLIT_HEADER]
    for k, (dicom, which) in enumerate(zip(ids, ["train", "train", "validate", "test", "train", "test"])):
        subject, study = 10000032 + k // 2, 50414267 + k
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        png(tmp_path / rel)
        rows.append(f"{rel},{k % 2}.0,,x")
        split.append(f"{dicom},{study},{subject},{which}")
    rows.append("files/p10/p10999999/s59999999/not-in-split.jpg,1.0,,x")
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(split) + "\n")
    t = read_table(data(tmp_path, table="table.csv", split_file="mimic-cxr-2.0.0-split.csv"), ("Edema", "Atelectasis"))
    assert [r.split for r in t.rows] == ["train", "train", "val", "test", "train", "test"]
    assert [r.patient for r in t.rows] == ["p10000032", "p10000032", "p10000033", "p10000033", "p10000034",
                                           "p10000034"]
    assert any("1 image(s) it does not list left out" in n for n in t.notes)
    (tmp_path / "bad.csv").write_text("dicom_id,split\n" + ids[0] + ",holdout\n")
    with pytest.raises(UserError, match="bad.csv line 2: split 'holdout' is none of train, val"):
        read_table(data(tmp_path, table="table.csv", split_file="bad.csv"), ("Edema",))


def test_a_kaggle_folder_uses_val_to_select_and_keeps_test(tmp_path, caplog):
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for cls in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                png(tmp_path / split / cls / f"{cls.lower()}-{i}.jpeg")
    cfg = model_cfg(("NORMAL", "PNEUMONIA"), channels=1, size=16)
    table = read_table(data(tmp_path), cfg.class_names)
    assert {s: sum(r.split == s for r in table.rows) for s in ("train", "val", "test")} == \
        {"train": 8, "val": 4, "test": 4}
    assert "test/PNEUMONIA/pneumonia-0.jpeg" in {r.key for r in table.rows}  # the key boxes.csv names it by
    with caplog.at_level(logging.INFO, logger="protomdm.data"):
        train, held, _ = dataset_source(data(tmp_path)).training(cfg)
    assert len(train) == 8 and len(held) == 4 and all(r.split == "val" for r in held.rows)
    assert "selected on the val split" in caplog.text


@pytest.mark.parametrize("architecture", ["protopnet", "xprotonet"])
def test_train_a_chexpert_table_under_u_ignore(tmp_path, architecture):
    """`protomdm train` on the CheXpert copy with U-Ignore and the frontal filter: finite losses, a mean AUROC over
    the known labels, and the notes in the log once."""
    import yaml

    keys = chexpert_copy(tmp_path, patients=8)
    cfg = {"model": {"architecture": architecture, "backbone": "tiny", "class_names": list(FINDINGS),
                     "prototypes_per_class": 1, "prototype_dim": 8, "img_size": [16, 16], "in_channels": 1,
                     "mean": [0.5], "std": [0.25]},
           "data": {"dataset": "table", "root": str(tmp_path), **keys, "uncertain": "ignore", "views": ["frontal"],
                    "batch_size": 8, "cache_dir": "none"},
           "optim": {"warm_epochs": 1, "joint_epochs": 0, "last_layer_epochs": 1}, "device": "cpu"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    import csv

    (row,) = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert np.isfinite(float(row["train_loss"])) and np.isfinite(float(row["test_mean_auroc"]))


def siim_encode_by_definition(mask: np.ndarray) -> str:
    """SIIM's encoding written out from its definition: walk the pixels down each column, left to right; each run
    of ones is ``start length`` with the start counted from where the previous run ended."""
    h, w = mask.shape
    out, last_end, run_start = [], 0, None
    for index in range(h * w + 1):
        on = index < h * w and bool(mask[index % h, index // h])
        if on and run_start is None:
            run_start = index
        elif not on and run_start is not None:
            out += [run_start - last_end, index - run_start]
            last_end, run_start = index, None
    return " ".join(map(str, out)) if out else "-1"


def test_siim_rle_masks_round_trip_and_are_a_masks_source(tmp_path):
    from protomdm.data.rle import decode_siim_rle, encode_siim_rle
    from protomdm.data.sources import EvalOptions

    rng = np.random.default_rng(0)
    a = np.zeros((40, 50), bool)
    a[5:12, 3:9] = True
    a[30:38, 40:49] = True
    b = np.zeros((40, 50), bool)
    b[0, 0] = b[39, 49] = b[:, 20] = True  # corners and a whole column: runs that touch the ends
    for mask in (a, b, rng.random((40, 50)) > 0.7, np.zeros((40, 50), bool)):
        text = siim_encode_by_definition(mask)
        assert encode_siim_rle(mask) == text and np.array_equal(decode_siim_rle(text, mask.shape), mask)
    # as data.masks: one row per region, -1 for none, the header as the competition ships it (", EncodedPixels")
    uid = "1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090"
    png(tmp_path / f"dicom-images-train/s1/r1/{uid}.png", h=40, w=50)
    png(tmp_path / "dicom-images-train/s2/r2/neg.png", h=40, w=50)
    (tmp_path / "labels.csv").write_text(f"path,labels,split\ndicom-images-train/s1/r1/{uid}.png,Pneumothorax,test\n"
                                         "dicom-images-train/s2/r2/neg.png,,test\n")
    half = np.zeros((40, 50), bool)
    half[5:12, 3:9] = True
    other = np.zeros((40, 50), bool)
    other[30:38, 40:49] = True
    (tmp_path / "train-rle.csv").write_text(f"ImageId, EncodedPixels\n{uid}, {siim_encode_by_definition(half)}\n"
                                            f"{uid}, {siim_encode_by_definition(other)}\nneg, -1\n")
    cfg = model_cfg(("Pneumothorax",), channels=1, size=40)
    cfg = type(cfg)(**{**cfg.__dict__, "img_size": (40, 50)})
    (sample,) = dataset_source(data(tmp_path, table="labels.csv", masks="train-rle.csv")).evaluation(cfg, EvalOptions())
    (f,) = sample.findings
    assert np.array_equal(f.truth, a)
    # an encoding of a larger image is said, for that image, in one line
    (tmp_path / "train-rle.csv").write_text(f"ImageId,EncodedPixels\n{uid},1990 20\n")
    (skipped,) = dataset_source(data(tmp_path, table="labels.csv", masks="train-rle.csv")).evaluation(cfg, EvalOptions())
    assert "masks line 2: its runs end at pixel 2010, beyond the 50x40 image" in skipped.reason
    (tmp_path / "train-rle.csv").write_text("ImageId,EncodedPixels\nnobody,1 2\n")
    with pytest.raises(UserError, match="train-rle.csv line 2: its ImageId names no image of the table"):
        read_table(data(tmp_path, table="labels.csv", masks="train-rle.csv"), ("Pneumothorax",))


def test_pretrained_without_network_is_one_line_naming_the_file_and_folder(tmp_path, monkeypatch, capsys):
    import urllib.error

    import torch.hub

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    code = main(["init-model", "--model", "protopnet", "--backbone", "resnet18", "--classes", "a,b", "--pretrained",
                 "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert not (tmp_path / "m.pt").exists()


def test_the_resume_refusal_names_the_setting_that_differs_and_both_values(tmp_path):
    from protomdm.files import check_run_settings

    long = {"methods": ["upsample", "mdm"], "mdm": {"steps": 400, "masks": list(range(6, 33)), "lambda_l1": 3.0}}
    check_run_settings(tmp_path, long, resume=False)
    changed = {**long, "mdm": {**long["mdm"], "lambda_l1": 2.0}}
    with pytest.raises(UserError, match=r"mdm.lambda_l1 was 3.0, now 2.0; resume with the same settings"):
        check_run_settings(tmp_path, changed, resume=True)
    check_run_settings(tmp_path, long, resume=True)  # the same settings resume
