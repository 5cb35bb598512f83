"""A DICOM structured report of one localization (TID 1500 Measurement Report, Comprehensive SR, via highdicom.sr).

What it says, in the form a PACS, OHIF or a research database reads:

- the observer: the device ``protomdm`` and its version;
- one measurement group for the whole finding: the explained class (coded, :func:`finding_code`), its
  probability, the mask's area, referencing segment 1 of the binary SEG, with the algorithm (name, version, method
  and settings);
- one group per region of the mask: its box as an image region (SCOORD POLYLINE on the source), area and peak;
- for a case report, one group per top prototype: its box, similarity, weight and contribution to the logit.

Areas are in mm2 when the source has a valid spacing (Pixel Spacing, else Imager Pixel Spacing: at the detector,
not corrected for magnification), else in pixels. The evidence lists the source image and both SEGs; patient and
study attributes are the source copy's (empty unless ``--keep-phi``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..version import SOFTWARE, __version__

#: Coding scheme of protomdm's own concepts (a private scheme designator, "99" as PS3.16 8.2 reserves).
LOCAL_SCHEME = "99PROTOMDM"
#: Chest findings whose SNOMED CT codes pydicom's dictionary does not list under their names (or lists only
#: generically: NIH's "Effusion" is a pleural effusion, its "Edema" a pulmonary one), by normalised name.
CHEST_FINDINGS = {"atelectasis": ("46621007", "Atelectasis"), "pneumonia": ("233604007", "Pneumonia"),
                  "emphysema": ("87433001", "Pulmonary emphysema"), "effusion": ("60046008", "Pleural effusion"),
                  "pleuraleffusion": ("60046008", "Pleural effusion"), "edema": ("19242006", "Pulmonary edema")}


def algorithm_parameters(method: str, settings: dict[str, Any]) -> dict[str, str]:
    """The method and its settings as the algorithm's parameters (strings, as DICOM stores them)."""
    return {"method": method, **{k: str(v) for k, v in sorted(settings.items())}}


def _local(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, LOCAL_SCHEME, meaning)


def finding_code(name: str):
    """The coded concept of a class name: SNOMED CT where a code is known (:data:`CHEST_FINDINGS`, then pydicom's
    dictionary by the name in CamelCase: "Pleural effusion" -> ``codes.SCT.PleuralEffusion``), else a local code
    of scheme :data:`LOCAL_SCHEME` whose meaning is the name."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    key = re.sub(r"[^a-z0-9]", "", name.lower())
    if key in CHEST_FINDINGS:
        value, meaning = CHEST_FINDINGS[key]
        return Code(value, "SCT", meaning)
    keyword = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", name) if w)
    try:
        return getattr(codes.SCT, keyword)
    except AttributeError:
        return _local("CLS-" + (key[:10] or "unnamed"), name[:64] or "unnamed class")


def _measurement(name, value: float, unit):
    import highdicom as hd

    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def _area(pixels: float, spacing: tuple[float, float] | None):
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    if spacing:
        return _measurement(codes.SCT.Area, pixels * spacing[0] * spacing[1], codes.UCUM.SquareMillimeter)
    return _measurement(codes.SCT.Area, pixels, Code("{pixels}", "UCUM", "pixels"))


def _box_region(src, box):
    import highdicom as hd

    x0, y0, x1, y1 = (float(v) for v in box)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                             source_image=hd.sr.SourceImageForRegion.from_source_image(src))


def _segment_reference_only(items) -> None:
    """Drop Referenced Frame Number where Referenced Segment Number is present (PS3.3 C.17.3: the two are
    exclusive; highdicom writes both, and the SEG's single frame is implied by its segment)."""
    for item in items:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in ref and "ReferencedFrameNumber" in ref:
                del ref.ReferencedFrameNumber
        _segment_reference_only(item.get("ContentSequence", []))


def structured_report(src, seg, heatmap, finding, **common: Any):
    """The Comprehensive SR of ``finding`` (a :class:`protomdm.report.dicom.Finding`) on the source copy ``src``,
    referencing the binary ``seg`` and fractional ``heatmap`` SEGs (None for a case report, which has no mask of
    its own); ``common``: UIDs, numbers and manufacturer."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    params = algorithm_parameters(finding.method, finding.settings)
    algorithm = hd.sr.AlgorithmIdentification(name=SOFTWARE, version=__version__,
                                              parameters=[f"{k}={v}" for k, v in params.items()])
    code = finding_code(finding.class_name)
    whole = []
    if seg is not None:
        whole.append(_area(float(sum(r["area"] for r in finding.regions)), finding.pixel_spacing))
    if finding.probability is not None:
        whole.append(_measurement(codes.DCM.Probability, finding.probability, codes.UCUM.NoUnits))
    ident = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=finding.label[:64])
    if seg is not None:
        groups = [hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=ident, finding_type=code, algorithm_id=algorithm, measurements=whole,
            referenced_segment=hd.sr.ReferencedSegmentationFrame(  # (from_segmentation reads per-frame items)
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=1,
                segment_number=1, source_image=hd.sr.SourceImageForSegmentation(src.SOPClassUID, src.SOPInstanceUID)))]
        _segment_reference_only(groups[0])
    else:  # a case report: the decision, without a mask of its own
        groups = [hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=ident, finding_type=code,
                                                              algorithm_id=algorithm, measurements=whole or None)]
    peak = _local("PEAK", "Heatmap peak")
    for i, r in enumerate(finding.regions, 1):
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"region {i}"),
            referenced_region=_box_region(src, r["box"]), finding_type=code, algorithm_id=algorithm,
            measurements=[_area(r["area"], finding.pixel_spacing),
                          _measurement(peak, r["peak"], codes.UCUM.NoUnits)]))
    for p in finding.prototypes:
        values = [_measurement(_local("SIM", "Prototype similarity"), p["similarity"], codes.UCUM.NoUnits),
                  _measurement(_local("WEIGHT", "Prototype weight"), p["weight"], codes.UCUM.NoUnits),
                  _measurement(_local("CONTRIB", "Prototype contribution"), p["contribution"], codes.UCUM.NoUnits)]
        ident = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"prototype {p['prototype']}")
        kw = dict(tracking_identifier=ident, finding_type=finding_code(p["class_name"]), algorithm_id=algorithm,
                  measurements=values)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=_box_region(src, p["box"]), **kw) if p.get("box")
            else hd.sr.MeasurementsAndQualitativeEvaluations(**kw))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=SOFTWARE, manufacturer_name=SOFTWARE, model_name=__version__))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport)
    evidence = [d for d in (src, seg, heatmap) if d is not None]
    return hd.sr.ComprehensiveSR(evidence=evidence, content=report[0], is_complete=True, **common)
