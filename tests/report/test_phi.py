"""DICOM outputs carry what a viewer needs and nothing that identifies the patient (PS3.15 Annex E and beyond)."""

import re

import numpy as np
import pydicom
import pytest
from conftest import tiny_model
from dicom_factory import make_dicom
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset

from protomdm.cli import main
from protomdm.models import save_checkpoint
from protomdm.report.dicom import EMPTY_KEYWORDS, KEPT_KEYWORDS

hd = pytest.importorskip("highdicom")

# a marker per value representation that can identify someone; every one must vanish from the outputs
MARKERS = {"PN": "PHIMARK^Name", "LO": "PHIMARK", "SH": "PHIMARK", "LT": "PHIMARK", "ST": "PHIMARK",
           "UT": "PHIMARK", "UC": "PHIMARK", "DA": "18880808", "DT": "18880808080808", "TM": "080808.123",
           "AS": "088Y"}
NEEDLES = (b"PHIMARK", b"18880808", b"080808.123", b"088Y")
SEQUENCES = ("OtherPatientIDsSequence", "ReferencedPatientSequence", "IssuerOfAccessionNumberSequence",
             "PhysiciansOfRecordIdentificationSequence", "ConsultingPhysicianIdentificationSequence",
             "ReferringPhysicianIdentificationSequence", "RequestAttributesSequence", "ReferencedStudySequence")


def every_identifying_attribute() -> dict:
    """Every non-retired attribute of the DICOM dictionary whose VR holds free text, names, dates, times or ages
    (a superset of the Annex E profile's table), outside the command, file meta and pixel description groups and the group lengths."""
    out = {}
    for tag, (vr, _, _, retired, keyword) in DicomDictionary.items():
        group = tag >> 16
        if (vr in MARKERS and not retired and keyword and group not in (0x0002, 0x0028, 0x7FE0)
                and keyword not in KEPT_KEYWORDS and group >= 0x0008 and tag & 0xFFFF):
            out[keyword] = MARKERS[vr]
    return out


def test_no_marker_survives_in_any_output_and_the_objects_still_validate(tmp_path):
    attrs = every_identifying_attribute()
    assert {"AdditionalPatientHistory", "ConsultingPhysicianName", "AdmissionID", "Occupation", "MedicalAlerts",
            "ClinicalTrialSubjectID", "PatientBirthDateInAlternativeCalendar", "AdmittingDiagnosesDescription"} <= set(attrs)
    rng = np.random.default_rng(0)
    src = make_dicom(tmp_path / "scan.dcm",
                     (rng.random((48, 48)) * 4095).astype(np.uint16), bits_stored=12)
    ds = pydicom.dcmread(src)
    for kw, v in attrs.items():
        setattr(ds, kw, v)
    for kw in SEQUENCES:
        item = Dataset()
        item.PatientID, item.PersonName = "PHIMARK", "PHIMARK^Seq"
        setattr(ds, kw, [item])
    ds.add_new(0x00991010, "LO", "PHIMARK private")
    ds.save_as(src)
    assert sum(n in src.read_bytes() for n in NEEDLES) == len(NEEDLES)  # the markers are really in the input

    ckpt = save_checkpoint(tiny_model("xprotonet", in_channels=1, mean=(0.5,), std=(0.25,), img_size=(48, 48)),
                           tmp_path / "m.pt")
    out = tmp_path / "out"
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(src), "--method", "upsample", "--out", str(out),
                 "--quiet"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".png", ".json", ".dcm"}
    for p in files:
        blob = p.read_bytes()
        assert not [n for n in NEEDLES if n in blob], p.name

    seg_p = next(p for p in files if p.name.endswith("_seg.dcm"))
    heat_p = next(p for p in files if p.name.endswith("_heatmap.dcm"))
    sr_p = next(p for p in files if p.name.endswith("_sr.dcm"))
    seg, heat, sr = hd.seg.segread(seg_p), hd.seg.segread(heat_p), hd.sr.srread(sr_p)
    for obj in (seg, heat):
        assert obj.StudyInstanceUID == ds.StudyInstanceUID
        ref = obj.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == ds.SeriesInstanceUID
        assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    for obj in (seg, heat, sr):
        for kw in EMPTY_KEYWORDS:  # required by the IODs: present, empty
            assert kw in obj and not obj[kw].value, kw

    keep = tmp_path / "keep"
    assert main(["localize", "--ckpt", str(ckpt), "--image", str(src), "--method", "upsample", "--out", str(keep),
                 "--quiet", "--keep-phi"]) == 0
    for kind in ("seg", "heatmap", "sr"):
        assert b"PHIMARK" in next(keep.glob(f"*_{kind}.dcm")).read_bytes(), kind  # asked for: kept


@pytest.mark.parametrize("files,path_format", [
    (["MRN000111", "MRN000222", "MRN000333", "MRN000444"], "{}"),  # DICOMs without a suffix
    (["MRN000111.img", "MRN000222.IMA", "MRN000333.img", "MRN000444.IMA"], "{}"),  # other suffixes
    (["scans/MRN000111.dcm", "scans/MRN000222.dcm", "scans/MRN000333.dcm", "scans/MRN000444.dcm"], "scans/{}.dcm"),
])
def test_a_table_of_dicoms_keyed_by_mrn_leaves_no_mrn_in_checkpoints_or_galleries(tmp_path, files, path_format):
    import dataclasses

    from conftest import small_config

    from protomdm.data.config import DataConfig
    from protomdm.training import train

    rng = np.random.default_rng(0)
    keys = [f.split("/")[-1].split(".")[0] if "{}" != path_format else f for f in files]
    (tmp_path / "scans").mkdir()
    for k, f in enumerate(files):
        make_dicom(tmp_path / f, (rng.random((32, 32)) * 255).astype(np.uint8), bits_stored=8)
    (tmp_path / "t.csv").write_text("path,labels,split\n" + "".join(
        f"{key},{('disk', 'square')[k % 2]},{'train' if k < 2 else 'test'}\n" for k, key in enumerate(keys)))
    cfg = small_config(warm_epochs=1, joint_epochs=0, last_layer_epochs=0)
    cfg.model = dataclasses.replace(cfg.model, class_names=("disk", "square"), in_channels=1, mean=(0.5,),
                                    std=(0.25,))
    cfg.data = DataConfig(dataset="table", root=str(tmp_path), table="t.csv", path_format=path_format,
                          cache_dir="none", batch_size=2)
    train(cfg, tmp_path / "run", progress=False)
    assert main(["prototypes", "--ckpt", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "g"),
                 "--method", "upsample", "--quiet"]) == 0
    written = [p for d in ("run", "g") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert [p for p in written if any(f"MRN000{n}".encode() in p.read_bytes() for n in (111, 222, 333, 444))] == []
    sources = {r["source"] for r in torch_load(tmp_path / "run" / "best.pt")["extra"]["push"]}
    assert sources <= {"line 2 (DICOM)", "line 3 (DICOM)"}, sources


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)


def test_a_dicom_without_uid_is_named_by_its_pixels_never_its_file_name(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "in" / "Doe_John_MRN000111"
    src.mkdir(parents=True)
    make_dicom(src / "Doe_John.dcm", (rng.random((40, 40)) * 255).astype(np.uint8), bits_stored=8,
               SOPInstanceUID=None)
    ckpt = save_checkpoint(tiny_model("xprotonet", in_channels=1, mean=(0.5,), std=(0.25,)), tmp_path / "m.pt")
    for args in (["--input", tmp_path / "in"], ["--input", tmp_path / "in", "--report"]):
        out = tmp_path / f"out{len(args)}"
        code = main([str(a) for a in ["localize", "--ckpt", ckpt, *args, "--method", "upsample", "--out", out,
                                      "--quiet"]])
        assert code == 0, capsys.readouterr()  # localized and reported, with PNG and JSON outputs only
        names = [p.relative_to(out).as_posix() for p in out.rglob("*")]
        assert names and not [n for n in names if "Doe" in n or "MRN" in n], names
        for p in out.rglob("*"):
            if p.is_file() and p.suffix in (".html", ".json", ".csv") and p.name != "results.csv":  # the map
                text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", p.read_text(errors="replace"))
                assert "Doe" not in text, p  # (an image's base64 may spell anything)


def test_a_failed_single_image_localize_leaves_nothing(tmp_path, capsys, monkeypatch):
    from protomdm.jobs.localize import LocalizeJob

    rng = np.random.default_rng(0)
    src = make_dicom(tmp_path / "scan.dcm", (rng.random((40, 40)) * 255).astype(np.uint8), bits_stored=8)
    ckpt = save_checkpoint(tiny_model("xprotonet", in_channels=1, mean=(0.5,), std=(0.25,)), tmp_path / "m.pt")
    real = LocalizeJob.write

    def failing_late(self, image, j, loc, probability, out, stem):
        real(self, image, j, loc, probability, out, stem)  # every file written ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(LocalizeJob, "write", failing_late)
    out = tmp_path / "out"
    code = main(["localize", "--ckpt", str(ckpt), "--image", str(src), "--method", "upsample", "--out", str(out),
                 "--quiet"])
    assert code != 0 and list(out.iterdir()) == []
    assert "No space left on device" in capsys.readouterr().err
