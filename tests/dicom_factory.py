"""Build small DICOM files with pydicom for the tests (no data leaves the test's temporary folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PATIENT_NAME = "Doe^Jane^Quincy"
PATIENT_ID = "PID-93217-XYZ"


def make_dicom(path: str | Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
               signed: bool = False, sop_class: str = DX_STORAGE, transfer_syntax: str = ExplicitVRLittleEndian,
               pixel_data: bytes | None = None, **attrs) -> Path:
    """Write ``pixels`` (``(H, W)`` integers, or ``(H, W, 3)`` uint8 for RGB) as a DICOM file; ``attrs`` are set
    on the dataset as given (e.g. ``RescaleSlope=2``, ``WindowCenter=...``; ``None`` removes one)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, "19700101", "F"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC-4471", "STUDY-88", "Who^Doctor"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20200102", "101010", 1, 1
    ds.Modality = {DX_STORAGE: "DX", CR_STORAGE: "CR"}.get(sop_class, "OT")
    ds.Manufacturer = "protomdm-tests"
    ds.PatientOrientation = ["L", "F"]
    rgb = pixels.ndim == 3
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.ImagerPixelSpacing = [0.143, 0.139]
    for k, v in attrs.items():  # None removes an attribute the factory sets
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    if pixel_data is not None:
        ds.PixelData = pixel_data
    elif pixels.size:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
