"""DICOM in (pixel pipeline against hand-computed values, bad files) and DICOM out (SEG, fractional SEG and SR read
back with highdicom and pydicom), patient-data safety."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from dicom_factory import PATIENT_ID, PATIENT_NAME, make_dicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from protomdm.data.dicom import read_dicom
from protomdm.data.images import read_image
from protomdm.errors import ImageError

hd = pytest.importorskip("highdicom")
HAS_DECODERS = importlib.util.find_spec("pylibjpeg") is not None  # the `dicom` extra


def test_rescale_then_first_window(tmp_path):
    stored = np.array([[0, 250, 500, 700, 1000]], np.uint16)
    # modality = 2 x - 1000 -> [-1000, -500, 0, 400, 1000]; window C=0 W=1001 (LINEAR, PS3.3 C.11.2.1.2.1):
    # 0 below -500.5, 1 above 499.5, else (m + 0.5) / 1000 + 0.5. The second window must be ignored.
    p = make_dicom(tmp_path / "a.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                   WindowCenter=[0, 300], WindowWidth=[1001, 20])
    im = read_dicom(p)
    np.testing.assert_allclose(im.pixels, [[0.0, 0.0005, 0.5005, 0.9005, 1.0]], atol=1e-6)
    assert im.pixel_spacing == (0.143, 0.139)
    assert im.metadata["modality"] == "DX" and im.metadata["bits_stored"] == 12


def test_monochrome1_is_inverted(tmp_path):
    stored = np.array([[0, 250, 500, 700, 1000]], np.uint16)
    kw = dict(bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=1001)
    m2 = read_dicom(make_dicom(tmp_path / "m2.dcm", stored, **kw)).pixels
    m1 = read_dicom(make_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", **kw)).pixels
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-7)
    np.testing.assert_allclose(m1, [[1.0, 0.9995, 0.4995, 0.0995, 0.0]], atol=1e-6)


def test_voi_lut_sequence_wins_over_window(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]  # 4 entries, first mapped value 10, 8 bits
    item.LUTData = np.array([0, 51, 102, 255], np.uint16).tobytes()  # OW, as most writers store it
    stored = np.array([[5, 10, 11, 12, 13, 20]], np.uint16)
    p = make_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, VOILUTSequence=[item], WindowCenter=1000,
                   WindowWidth=10)
    np.testing.assert_allclose(read_dicom(p).pixels, [[0, 0, 51 / 255, 102 / 255, 1, 1]], atol=1e-6)


def test_sigmoid_and_linear_exact_windows(tmp_path):
    stored = np.array([[90, 100, 110]], np.uint16)
    p = make_dicom(tmp_path / "s.dcm", stored, WindowCenter=100, WindowWidth=20, VOILUTFunction="SIGMOID")
    np.testing.assert_allclose(read_dicom(p).pixels, [[1 / (1 + np.e ** 2), 0.5, 1 / (1 + np.e ** -2)]], atol=1e-6)
    p = make_dicom(tmp_path / "e.dcm", stored, WindowCenter=100, WindowWidth=40, VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(read_dicom(p).pixels, [[0.25, 0.5, 0.75]], atol=1e-6)


def test_signed_16bit_without_window_uses_min_max(tmp_path):
    stored = np.array([[-1000, 0, 1000], [-500, 500, 0]], np.int16)
    p = make_dicom(tmp_path / "s16.dcm", stored, signed=True)
    np.testing.assert_allclose(read_dicom(p).pixels, [[0, 0.5, 1], [0.25, 0.75, 0.5]], atol=1e-6)


def test_rgb_and_ybr_stay_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[1, 2] = 255, (10, 200, 30)
    im = read_dicom(make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", sop_class="1.2.840.10008.5.1.4.1.1.7"))
    np.testing.assert_allclose(im.pixels, rgb / 255.0, atol=1e-7)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    im = read_dicom(make_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL"))
    np.testing.assert_allclose(im.pixels, rgb / 255.0, atol=3 / 255)  # YBR rounding


def test_read_image_dispatches_on_content_not_suffix(tmp_path):
    p = make_dicom(tmp_path / "IM0001", np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert read_image(p).metadata["format"] == "dicom"


def _bad_files(tmp_path):
    img = (np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64)
    good = make_dicom(tmp_path / "good.dcm", img, bits_stored=12)
    data = good.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 3000])
    (tmp_path / "text.dcm").write_text("this is not a DICOM file\n")
    yield tmp_path / "text.dcm", "not a DICOM file"
    yield tmp_path / "trunc.dcm", "truncated"
    yield make_dicom(tmp_path / "nopix.dcm", np.zeros((0, 0), np.uint16)), "no pixel data"
    yield make_dicom(tmp_path / "zero.dcm", np.zeros((0, 0), np.uint16), pixel_data=b"", Rows=0, Columns=64), "empty"
    yield make_dicom(tmp_path / "huge.dcm", np.zeros((2, 2), np.uint16), Rows=20000, Columns=20000), "too large"
    yield make_dicom(tmp_path / "frames.dcm", np.zeros((4, 4), np.uint16), pixel_data=b"\0" * 64,
                     NumberOfFrames=2), "multi-frame"
    lossless = "1.2.840.10008.1.2.4.70"  # JPEG Lossless: neither pydicom nor Pillow decodes it without pylibjpeg/gdcm
    yield make_dicom(tmp_path / "jpeg.dcm", img, bits_stored=12, transfer_syntax=lossless,
                     pixel_data=encapsulate([b"\xff\xd8\xff\xc3" + b"\0" * 64])), "decode"


def test_bad_dicom_files_give_one_line_errors(tmp_path):
    for path, reason in _bad_files(tmp_path):
        with pytest.raises(ImageError) as e:
            read_image(path)
        msg = str(e.value)
        assert reason in msg and "\n" not in msg and str(path.name) in msg, msg


def test_missing_decoder_names_the_extra(tmp_path):
    if HAS_DECODERS:
        pytest.skip("a JPEG Lossless decoder is installed here")
    img = np.zeros((8, 8), np.uint16)
    p = make_dicom(tmp_path / "jpeg.dcm", img, transfer_syntax="1.2.840.10008.1.2.4.70",
                   pixel_data=encapsulate([b"\xff\xd8\xff\xc3" + b"\0" * 64]))
    with pytest.raises(ImageError, match=r"pip install 'protomdm\[dicom\]'"):
        read_dicom(p)


def _finding(**kw):
    from protomdm.report.dicom import Finding

    base = dict(label="mdm prototype 1 (Effusion)", class_name="Effusion", probability=0.81, method="mdm",
                settings={"steps": 300, "lambda_l1": 3.0}, pixel_spacing=(0.2, 0.25),
                regions=[{"box": [10, 5, 30, 20], "area": 300.0, "peak": 0.93}])
    base.update(kw)
    return Finding(**base)


def _outputs(tmp_path, src, mask, heat, finding, keep_phi=False, tag=""):
    from protomdm.report.dicom import write_dicom_outputs

    paths = {k: tmp_path / f"{tag}{k}.dcm" for k in ("seg", "heatmap", "sr")}
    return write_dicom_outputs(src, mask, heat, paths, finding, keep_phi=keep_phi)


def test_seg_and_fractional_heatmap_reference_the_source(tmp_path):
    import pydicom

    rng = np.random.default_rng(0)
    src = make_dicom(tmp_path / "src.dcm", (rng.random((40, 56)) * 4095).astype(np.uint16), bits_stored=12)
    mask = np.zeros((40, 56), bool)
    mask[5:20, 10:30] = True
    heat = rng.random((40, 56)).astype(np.float32)
    files = _outputs(tmp_path, src, mask, heat, _finding())
    ds = pydicom.dcmread(src)

    seg = hd.seg.segread(files["seg"])
    got = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    np.testing.assert_array_equal(got.astype(bool), mask)
    frac = hd.seg.segread(files["heatmap"])
    assert frac.SegmentationType == "FRACTIONAL" and frac.SegmentationFractionalType == "PROBABILITY"
    got = frac.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    np.testing.assert_allclose(got, heat, atol=0.5 / 255 + 1e-6)  # 8 bits, 255 = 1
    for obj in (seg, frac):
        assert obj.StudyInstanceUID == ds.StudyInstanceUID
        ref = obj.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == ds.SeriesInstanceUID
        assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert obj.SOPInstanceUID != ds.SOPInstanceUID and obj.Rows == ds.Rows and obj.Columns == ds.Columns
        assert str(obj.PatientName) == "" and obj.PatientID == ""
        assert list(obj.PatientOrientation) == ["L", "F"]  # Type 2C for a projection image: carried over
        algo = obj.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "protomdm" and "method=mdm" in algo.AlgorithmParameters
        assert "lambda_l1=3.0" in algo.AlgorithmParameters
    for f in files.values():
        blob = f.read_bytes()
        assert PATIENT_NAME.split("^")[0].encode() not in blob and PATIENT_ID.encode() not in blob

    files = _outputs(tmp_path, src, mask, heat, _finding(), keep_phi=True, tag="phi")
    for f in files.values():
        obj = pydicom.dcmread(f)
        assert str(obj.PatientName) == PATIENT_NAME and obj.PatientID == PATIENT_ID, f.name


def test_structured_report_reads_back_with_highdicom(tmp_path):
    """TID 1500: the coded finding, its probability, the area in mm2 from the spacing, each region as a SCOORD
    box on the source with its peak, the prototypes of a case report, references to the source and the SEG."""
    import pydicom
    from pydicom.sr.codedict import codes

    rng = np.random.default_rng(1)
    src = make_dicom(tmp_path / "src.dcm", (rng.random((40, 56)) * 4095).astype(np.uint16), bits_stored=12)
    mask = np.zeros((40, 56), bool)
    mask[5:20, 10:30] = True
    protos = [{"prototype": 4, "class_name": "Atelectasis", "similarity": 2.5, "weight": 1.25,
               "contribution": 3.125, "box": [1, 2, 9, 12]},
              {"prototype": 7, "class_name": "Hernia", "similarity": 0.5, "weight": 0.5, "contribution": 0.25,
               "box": None}]
    files = _outputs(tmp_path, src, mask, mask * 0.9, _finding(prototypes=protos))
    sr = hd.sr.srread(files["sr"])
    ds, seg = pydicom.dcmread(src), pydicom.dcmread(files["seg"])
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and str(sr.PatientName) == ""
    evidence = {ref.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert {ds.SOPInstanceUID, seg.SOPInstanceUID} <= evidence
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["mdm prototype 1 (Effusion)", "region 1", "prototype 4"]
    whole, region, proto = groups
    assert whole.finding_type == hd.sr.CodedConcept("60046008", "SCT", "Pleural effusion")  # NIH's "Effusion"
    assert whole.reference_type == codes.DCM.ReferencedSegmentationFrame
    assert whole.referenced_segmentation_frame.referenced_sop_instance_uid == seg.SOPInstanceUID
    values = {m.name.meaning: (m.value, m.unit.value) for m in whole.get_measurements()}
    assert values["Probability"] == (pytest.approx(0.81), "1")
    assert values["Area"] == (pytest.approx(300 * 0.2 * 0.25), "mm2")
    assert region.reference_type == codes.DCM.ImageRegion
    np.testing.assert_allclose(region.roi.value, [[10, 5], [30, 5], [30, 20], [10, 20], [10, 5]])
    assert region.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert {m.name.meaning: m.value for m in region.get_measurements()}["Heatmap peak"] == pytest.approx(0.93)
    assert proto.finding_type.value == "46621007"  # Atelectasis, SNOMED CT
    assert {m.name.meaning: m.value for m in proto.get_measurements()} == {
        "Prototype similarity": 2.5, "Prototype weight": 1.25, "Prototype contribution": 3.125}
    (boxless,) = sr.content.get_image_measurement_groups()  # a prototype without a box: no region
    assert boxless.tracking_identifier == "prototype 7"
    assert boxless.finding_type.scheme_designator == "99PROTOMDM"  # Hernia: no code known here, a local one


def test_finding_codes():
    from protomdm.report.sr import finding_code

    assert finding_code("Cardiomegaly").value == "287272002"  # pydicom's dictionary by name
    assert finding_code("Pleural effusion").value == finding_code("Effusion").value == "60046008"
    assert finding_code("Pleural_Thickening").scheme_designator == "99PROTOMDM"
    assert finding_code("Pleural_Thickening").meaning == "Pleural_Thickening"
    assert finding_code("disk").scheme_designator == "99PROTOMDM"


def test_invalid_spacing_and_orientation_are_left_out(tmp_path):
    import pydicom

    rng = np.random.default_rng(2)
    src = make_dicom(tmp_path / "src.dcm", (rng.random((20, 24)) * 4095).astype(np.uint16), bits_stored=12,
                     PixelSpacing=[0, 0], ImagerPixelSpacing=[0.1, 0.1], PatientOrientation=["Q", "F"])
    from protomdm.data.dicom import pixel_spacing

    assert pixel_spacing(pydicom.dcmread(src)) == (0.1, 0.1)  # a 0\0 Pixel Spacing hides no valid spacing
    files = _outputs(tmp_path, src, np.ones((20, 24), bool), np.ones((20, 24), np.float32) * 0.5, _finding())
    for f in ("seg", "heatmap"):
        obj = pydicom.dcmread(files[f])
        assert "PixelSpacing" not in obj and "PatientOrientation" in obj and not obj.PatientOrientation
        assert "PixelMeasuresSequence" not in obj.SharedFunctionalGroupsSequence[0]


def _pydicom_file(name):
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name, download=False)
    if p is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return p


def test_real_files_shipped_with_pydicom():
    """Files written by real scanners and toolkits (shipped in the pydicom wheel): CT with rescale and window, RLE,
    JPEG 2000, JPEG with RGB, and the failure cases."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ct = pydicom.dcmread(_pydicom_file("CT_small.dcm"))
    ours = read_dicom(_pydicom_file("CT_small.dcm")).pixels
    theirs = apply_modality_lut(ct.pixel_array, ct).astype(np.float64)  # independent: pydicom's own pipeline
    theirs = apply_voi_lut(theirs, ct) if "WindowCenter" in ct else theirs
    theirs = (theirs - theirs.min()) / (theirs.max() - theirs.min())
    assert ours.shape == (128, 128) and np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999
    assert read_dicom(_pydicom_file("MR_small_RLE.dcm")).pixels.shape == (64, 64)
    assert read_dicom(_pydicom_file("JPEG2000.dcm")).pixels.shape == (1024, 256)
    assert read_dicom(_pydicom_file("SC_rgb_rle.dcm")).pixels.shape == (100, 100, 3)
    with pytest.raises(ImageError, match="no pixel data"):
        read_dicom(_pydicom_file("rtplan.dcm"))
    with pytest.raises(ImageError, match="truncated"):
        read_dicom(_pydicom_file("MR_truncated.dcm"))
    if not HAS_DECODERS:
        with pytest.raises(ImageError, match=r"protomdm\[dicom\]"):
            read_dicom(_pydicom_file("SC_rgb_jpeg_gdcm.dcm"))  # real JPEG Lossless
