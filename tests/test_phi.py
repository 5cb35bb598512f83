"""DICOM outputs carry what a viewer needs and nothing that identifies the patient (PS3.15 Annex E and beyond)."""

import numpy as np
import pydicom
import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset

from protomdm.cli import main
from protomdm.models import save_checkpoint
from protomdm.report.dicom import EMPTY_KEYWORDS, KEPT_KEYWORDS

from conftest import tiny_model
from dicom_factory import make_dicom

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
