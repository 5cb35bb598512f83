"""DICOM outputs for a DICOM input (highdicom): a binary Segmentation of the thresholded mask and a Parametric Map
of the heatmap, both referencing the source image so that viewers (OHIF, 3D Slicer, PACS) overlay them on it.

Patient data: the outputs are built from a *whitelist* of the source's attributes, not from the source with some
attributes removed. What is kept is what a viewer needs to place them on the image: the Study, Series, SOP Instance
and Frame of Reference UIDs and the SOP class (the references), and the image's geometry and pixel description. The
patient and study attributes that the SEG and Parametric Map IODs require (Type 2: Patient Name and ID, Birth Date,
Sex, Study Date and Time, Study ID, Accession Number, Referring Physician) are present and empty. Everything else,
including every attribute of PS3.15 Annex E's Basic Application Level Confidentiality Profile, private tags, and
whatever a future edition or a vendor adds, never reaches the outputs: a whitelist cannot miss what it never lists,
where a list of attributes to remove must be kept complete by hand. ``keep_phi=True`` builds them from the whole
source instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import atomic_write

#: Copied from the source: the references and the geometry a viewer needs (no value here identifies a patient).
KEPT_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                 "Modality", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                 "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelSpacing",
                 "ImagerPixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "PatientOrientation",
                 "SliceThickness", "SpacingBetweenSlices", "ImageType")
#: Present and empty: Type 2 attributes of the Patient and General Study modules the outputs' IODs require.
EMPTY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")
SOFTWARE = "protomdm"


def _parametric_map_class():
    """highdicom's ParametricMap, with a fix for images that have no patient coordinate system (DX, CR, SC).

    highdicom 0.28 indexes such a map's frames by Frame Label but writes no index values for them, then rejects its
    own object ("Unexpected mismatch between dimension index values ..."). Projection radiographs always take that
    path, so we fill in the single frame's index (1) and label before highdicom checks them. Maps of images with a
    coordinate system are left exactly as highdicom makes them.
    """
    import highdicom as hd

    class ParametricMap(hd.pm.ParametricMap):
        def _build_luts(self) -> None:
            pointers = [d.DimensionIndexPointer for d in self.get("DimensionIndexSequence", [])]
            if pointers == [0x00209453]:  # FrameLabel only: the no-coordinate-system case
                for item in self.get("PerFrameFunctionalGroupsSequence", []):
                    content = item.FrameContentSequence[0]
                    if not content.get("DimensionIndexValues"):
                        content.DimensionIndexValues = [1]
                        content.FrameLabel = "heatmap"
            super()._build_luts()

    return ParametricMap


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


def write_dicom_outputs(source: str | Path, mask: np.ndarray, heatmap: np.ndarray, seg_path: str | Path,
                        pm_path: str | Path, label: str, keep_phi: bool = False) -> tuple[Path, Path]:
    """Write a DICOM SEG of ``mask`` and a Parametric Map of ``heatmap`` for the DICOM image ``source``.

    Args:
        mask: ``(H, W)`` bool at the source's Rows x Columns.
        heatmap: ``(H, W)`` float in [0, 1] at the same size; stored as 16-bit with a real-world value mapping
            back to [0, 1] (integer maps display in more viewers than float ones).
        label: what the mask shows, e.g. ``"MDM prototype 3 (Effusion)"``; goes into the segment label.
        keep_phi: copy the patient/study attributes from the source (default: empty).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from ..version import __version__

    src = pydicom.dcmread(source)
    if not keep_phi:
        src = deidentified(src)
    if mask.shape != (src.Rows, src.Columns) or heatmap.shape != mask.shape:
        raise ValueError(f"mask {mask.shape} and heatmap {heatmap.shape} must match the image ({src.Rows}, "
                         f"{src.Columns})")
    common = dict(manufacturer=SOFTWARE, manufacturer_model_name=SOFTWARE, software_versions=__version__,
                  device_serial_number="0", instance_number=1)
    algorithm = hd.AlgorithmIdentificationSequence(name=f"{SOFTWARE} {label.split()[0]}", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label[:64], segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=mask.astype(bool)[None], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=901, sop_instance_uid=hd.UID(),
        omit_empty_frames=False, content_description=label[:64], **common)
    scale = 65535
    mapping = hd.pm.RealWorldValueMapping(lut_label="heatmap", lut_explanation=label[:64], unit=codes.UCUM.NoUnits,
                                          value_range=(0, scale), slope=1.0 / scale, intercept=0.0)
    pm = _parametric_map_class()(
        source_images=[src], pixel_array=np.rint(np.clip(heatmap, 0, 1) * scale).astype(np.uint16),
        series_instance_uid=hd.UID(), series_number=902, sop_instance_uid=hd.UID(),
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=scale / 2, window_width=scale)], content_description=label[:64], **common)
    return (atomic_write(seg_path, lambda tmp: seg.save_as(tmp)), atomic_write(pm_path, lambda tmp: pm.save_as(tmp)))
