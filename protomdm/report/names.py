"""Output file names that carry no patient data."""

from __future__ import annotations

import hashlib

from ..data.images import LoadedImage


def safe_name(text: str) -> str:
    """``text`` with every character but letters, digits and ``-_.`` replaced by ``_``: safe as a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def output_stem(image: LoadedImage) -> str:
    """A file-name stem for an image's outputs that carries no patient data: for a DICOM, a hash of its SOP
    Instance UID, or of its pixels when it has none (never its file name, which may name the patient)."""
    uid = image.metadata.get("sop_instance_uid")
    if uid:
        return "dcm-" + hashlib.sha256(str(uid).encode()).hexdigest()[:16]
    if is_dicom(image):
        return "dcm-" + hashlib.sha256(image.pixels.tobytes()).hexdigest()[:16]
    return safe_name(image.source.stem) or "image"


def output_names(stem: str, dicom: bool) -> dict[str, str]:
    """The files written for one image: overlay, mask and JSON, plus for DICOM the mask's SEG, the heatmap's
    fractional SEG and the structured report."""
    kinds = [("overlay", "png"), ("mask", "png"), ("localization", "json")]
    if dicom:
        kinds += [("seg", "dcm"), ("heatmap", "dcm"), ("sr", "dcm")]
    return {k: f"{stem}_{k}.{ext}" for k, ext in kinds}


def is_dicom(image: LoadedImage) -> bool:
    return image.metadata.get("format") == "dicom"


def has_dicom_outputs(image: LoadedImage) -> bool:
    """Whether DICOM objects (SEG, SR) can refer to ``image``: a DICOM with a SOP Instance UID."""
    return is_dicom(image) and bool(image.metadata.get("sop_instance_uid"))
