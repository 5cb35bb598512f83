"""DICOM outputs for a DICOM input (highdicom): a binary Segmentation of the thresholded mask, a FRACTIONAL
Segmentation of the heatmap, and a structured report of the finding (:mod:`protomdm.report.sr`), all referencing the
source image so that viewers (OHIF, 3D Slicer, PACS) overlay them on it and databases read what was found.

**Why the heatmap is a FRACTIONAL Segmentation (PROBABILITY), not a Parametric Map.** The Parametric Map IOD makes
the Frame of Reference module and the Plane Position and Plane Orientation (Patient) functional groups mandatory:
a projection radiograph (CR, DX) or a secondary capture has no patient coordinate system, so a Parametric Map of one
must either invent a geometry (and viewers then place it wrongly) or break the IOD (dciodvfy counted 9-11 errors in
each). The Segmentation IOD requires them only when the source has a frame of reference, and its FRACTIONAL type
stores a map of values in [0, 1] (8 bits here, 255 = 1). The same object serves CT/MR slices, where highdicom copies
the source's geometry.

**Geometry.** A source's Pixel Spacing or Imager Pixel Spacing that is not two positive numbers (e.g. ``0\\0``) is
left out, not copied. For images without a patient coordinate system the SEGs carry no Pixel Measures (its Slice
Thickness would have to be invented); Patient Orientation (Type 2C for them) is copied when valid and present empty
otherwise. The spacing a measurement used is written in the SR with it.

**Patient data**: the outputs are built from a *whitelist* of the source's attributes, not from the source with
some attributes removed. What is kept is what a viewer needs to place them on the image: the Study, Series, SOP
Instance and Frame of Reference UIDs and the SOP class (the references), and the image's geometry and pixel
description. The patient and study attributes that the IODs require (Type 2: Patient Name and ID, Birth Date, Sex,
Study Date and Time, Study ID, Accession Number, Referring Physician) are present and empty. Everything else,
including every attribute of PS3.15 Annex E's Basic Application Level Confidentiality Profile, private tags, and
whatever a future edition or a vendor adds, never reaches the outputs: a whitelist cannot miss what it never lists.
``keep_phi=True`` builds them from the whole source instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dicom import valid_spacing
from ..files import atomic_write
from ..version import SOFTWARE, __version__
from .sr import algorithm_parameters, structured_report

#: Copied from the source: the references and the geometry a viewer needs (no value here identifies a patient).
KEPT_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                 "Modality", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                 "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelSpacing",
                 "ImagerPixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "PatientOrientation",
                 "SliceThickness", "SpacingBetweenSlices", "ImageType")
#: Present and empty: Type 2 attributes of the Patient and General Study modules the outputs' IODs require.
EMPTY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: Series numbers of the three outputs (a viewer lists them after the source's series).
SERIES = {"seg": 901, "heatmap": 902, "sr": 903}
_ORIENTATION = re.compile(r"^[APLRHF]{1,3}$")


@dataclass
class Finding:
    """What one localization found, for the DICOM outputs.

    Attributes:
        label: what the mask shows, e.g. ``"mdm prototype 3 (Effusion)"`` (segment labels, content description).
        class_name: the explained class (coded in the SR, see :func:`protomdm.report.sr.finding_code`).
        probability: the model's probability of that class, or None.
        method: the localizer's registered name; ``settings`` its settings (the algorithm's parameters).
        regions: each connected region of the mask: ``box`` ``(x0, y0, x1, y1)`` in source pixels (exclusive
            ends), ``area`` in source pixels, ``peak`` the heatmap's maximum in it.
        pixel_spacing: ``(row, column)`` mm of the source, or None (areas are then in pixels).
        prototypes: for a case report, the top prototypes: ``prototype``, ``class_name``, ``similarity``,
            ``weight``, ``contribution`` and ``box`` (source pixels, or None).
    """

    label: str
    class_name: str
    probability: float | None
    method: str
    settings: dict[str, Any]
    regions: list[dict[str, Any]]
    pixel_spacing: tuple[float, float] | None = None
    prototypes: list[dict[str, Any]] = field(default_factory=list)


def deidentified(ds):
    """A new dataset with only :data:`KEPT_KEYWORDS` of ``ds`` and :data:`EMPTY_KEYWORDS` empty (see the module
    docstring); its file meta information keeps only the transfer syntax and the SOP class and instance."""
    from pydicom.dataset import Dataset, FileMetaDataset

    out = Dataset()
    for kw in KEPT_KEYWORDS:
        if kw in ds:
            out[kw] = ds[kw]
    for kw in EMPTY_KEYWORDS:
        setattr(out, kw, "")
    meta = FileMetaDataset()
    for kw in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
        if kw in getattr(ds, "file_meta", {}):
            meta[kw] = ds.file_meta[kw]
    out.file_meta = meta
    return out


def has_patient_geometry(ds) -> bool:
    """Whether ``ds`` places its pixels in the patient coordinate system (CT, MR: a frame of reference and an
    orientation), unlike a projection radiograph or a secondary capture."""
    return "FrameOfReferenceUID" in ds and "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds


def patient_orientation(ds) -> list[str] | str:
    """The source's Patient Orientation when it is two valid direction codes (``A P L R H F``, up to three each),
    else empty (the attribute is Type 2 for projection images: present, empty when unknown)."""
    value = ds.get("PatientOrientation")
    codes = [str(v) for v in value] if value is not None and not isinstance(value, str) else []
    return codes if len(codes) == 2 and all(_ORIENTATION.match(c) for c in codes) else ""


def geometry_fixed(ds):
    """``ds`` (a copy of the source) with the geometry the outputs may copy: invalid spacings removed, and for
    images without patient geometry no Pixel Spacing (see the module docstring)."""
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if kw in ds and (valid_spacing(ds[kw].value) is None or not has_patient_geometry(ds)):
            del ds[kw]
    return ds


def _common(series: str) -> dict[str, Any]:
    import highdicom as hd

    return dict(series_instance_uid=hd.UID(), series_number=SERIES[series], sop_instance_uid=hd.UID(),
                instance_number=1, manufacturer=SOFTWARE)


def _segmentation(src, pixels: np.ndarray, finding: Finding, kind: str, description: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE, version=__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters=algorithm_parameters(finding.method, finding.settings))
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"{description}: {finding.label}"[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    extra = ({"fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY}
             if kind == "heatmap" else {})
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=pixels[None], segment_descriptions=[segment],
        segmentation_type=(hd.seg.SegmentationTypeValues.FRACTIONAL if kind == "heatmap"
                           else hd.seg.SegmentationTypeValues.BINARY),
        manufacturer_model_name=SOFTWARE, software_versions=__version__, device_serial_number="0",
        omit_empty_frames=False, content_description=description[:64], content_label=kind.upper(),
        **_common(kind), **extra)
    if not has_patient_geometry(src):
        seg.PatientOrientation = patient_orientation(src)
    return seg


def _source_copy(source: str | Path, keep_phi: bool):
    import pydicom

    src = pydicom.dcmread(source, stop_before_pixels=True)  # the outputs refer to the pixels, never copy them
    return geometry_fixed(src if keep_phi else deidentified(src))


def write_case_sr(source: str | Path, finding: Finding, path: Path, keep_phi: bool = False) -> Path:
    """Write the SR of a case report (``finding.prototypes`` filled in, no mask) for the DICOM image ``source``."""
    sr = structured_report(_source_copy(source, keep_phi), None, None, finding, **_common("sr"))
    return atomic_write(path, lambda tmp: sr.save_as(tmp))


def write_dicom_outputs(source: str | Path, mask: np.ndarray, heatmap: np.ndarray, paths: dict[str, Path],
                        finding: Finding, keep_phi: bool = False) -> dict[str, Path]:
    """Write the binary SEG of ``mask`` (``paths["seg"]``), the fractional SEG of ``heatmap``
    (``paths["heatmap"]``) and the SR of ``finding`` (``paths["sr"]``) for the DICOM image ``source``.

    Args:
        mask: ``(H, W)`` bool at the source's Rows x Columns.
        heatmap: ``(H, W)`` float in [0, 1] at the same size.
        keep_phi: copy the patient/study attributes from the source (default: empty).

    Returns:
        the written paths by kind.
    """
    src = _source_copy(source, keep_phi)
    if mask.shape != (src.Rows, src.Columns) or heatmap.shape != mask.shape:
        raise ValueError(f"mask {mask.shape} and heatmap {heatmap.shape} must match the image ({src.Rows}, "
                         f"{src.Columns})")
    seg = _segmentation(src, mask.astype(bool), finding, "seg", "mask")
    heat = _segmentation(src, np.clip(heatmap, 0, 1, dtype=np.float32), finding, "heatmap", "heatmap")
    sr = structured_report(src, seg, heat, finding, **_common("sr"))
    return {kind: atomic_write(paths[kind], lambda tmp, obj=obj: obj.save_as(tmp))
            for kind, obj in (("seg", seg), ("heatmap", heat), ("sr", sr))}
