"""An independent DICOM validator for the tests and scripts/dicom_validity.py: dicom3tools' ``dciodvfy -new``, and
the real and made projection radiographs and secondary captures its verdicts are measured on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from dicom_factory import CR_STORAGE, SC_STORAGE, make_dicom

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The ``Error`` lines of ``dciodvfy -new`` on one file (its warnings are not counted)."""
    if DCIODVFY is None:
        raise RuntimeError("dciodvfy is not installed (Debian package dicom3tools)")
    run = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _installed(package: str, name: str) -> Path | None:
    import importlib.metadata as md

    try:
        files = md.files(package) or []
    except md.PackageNotFoundError:
        return None
    return next((Path(f.locate()) for f in files if f.name == name), None)


def validation_sources(folder: str | Path, decoders: bool = False) -> dict[str, Path]:
    """Sources by description: made DX (MONOCHROME2 and 1, with Imager Pixel Spacing, with Pixel Spacing, without
    either), a made CR and secondary capture, and the real files pydicom ships or ``pydicom-data`` installs (CR with a
    Pixel Spacing of 0\\0, CR without spacing, a tiny CR from a Japanese site, a JPEG 2000 CR when ``decoders``, a
    grey and an RGB secondary capture, and a CT slice with a patient coordinate system)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    px = (rng.random((96, 80)) * 4095).astype(np.uint16)
    out = {
        "DX MONOCHROME2, imager spacing (made)": make_dicom(folder / "dx2.dcm", px, bits_stored=12),
        "DX MONOCHROME1, pixel spacing (made)": make_dicom(folder / "dx1.dcm", px, bits_stored=12,
                                                           photometric="MONOCHROME1", PixelSpacing=[0.2, 0.2]),
        "DX without spacing or orientation (made)": make_dicom(folder / "dx0.dcm", px, bits_stored=12,
                                                               ImagerPixelSpacing=None, PatientOrientation=None),
        "CR MONOCHROME1 (made)": make_dicom(folder / "cr.dcm", px, bits_stored=12, sop_class=CR_STORAGE,
                                            photometric="MONOCHROME1"),
        "SC MONOCHROME2 (made)": make_dicom(folder / "sc.dcm", (px >> 4).astype(np.uint8), sop_class=SC_STORAGE,
                                            ImagerPixelSpacing=None, ConversionType="WSD"),
    }
    from pydicom.data import get_testdata_file

    for desc, name in (("CR tiny, MONOCHROME1 (pydicom)", "chrJapMulti.dcm"),
                       ("SC MONOCHROME2, deflated (pydicom)", "image_dfl.dcm"),
                       ("SC RGB, RLE (pydicom)", "SC_rgb_rle.dcm"),
                       ("CT slice, patient geometry (pydicom)", "CT_small.dcm")):
        p = get_testdata_file(name, download=False)
        if p:
            out[desc] = Path(p)
    for desc, name in (("CR chest, Pixel Spacing 0\\0 (pydicom-data)", "RG1_UNCI.dcm"),
                       ("CR without spacing (pydicom-data)", "RG3_UNCR.dcm"),
                       ("CR JPEG 2000 (pydicom-data)", "RG3_J2KI.dcm" if decoders else None)):
        p = _installed("pydicom-data", name) if name else None
        if p:
            out[desc] = p
    return out
