"""Every DICOM object protomdm writes passes an independent validator (dicom3tools' dciodvfy) with no error the
source itself does not have, on projection radiographs, secondary captures and a CT slice."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from dicom_validation import DCIODVFY, dciodvfy_errors, validation_sources

from protomdm.data.images import read_image
from protomdm.jobs.localize import LocalizeJob
from protomdm.report.names import output_stem

pytest.importorskip("highdicom")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (apt-get install dicom3tools)")


def _strip(lines: list[str]) -> set[str]:
    """Errors without their values, so that the same defect in source and output compares equal."""
    return {line.split(" - ")[1].split("[")[0] if " - " in line else line for line in lines}


def test_every_output_of_every_source_validates(tmp_path):
    torch.manual_seed(0)
    job = LocalizeJob(tiny_model("protopnet", in_channels=1, mean=(0.5,), std=(0.25,)), "tiny.pt",
                      method="upsample")
    sources = validation_sources(tmp_path / "src")
    assert len(sources) >= 6  # the made ones at least
    report = {}
    for i, (desc, src) in enumerate(sources.items()):
        image = read_image(src)
        out = tmp_path / f"out{i}"
        out.mkdir()
        files = job.run(image, out, output_stem(image)).files
        dcm = {k: p for k, p in files.items() if p.suffix == ".dcm"}
        assert set(dcm) == {"seg", "heatmap", "sr"}, desc
        own = _strip(dciodvfy_errors(src))
        report[desc] = {k: sorted(_strip(dciodvfy_errors(p)) - own) for k, p in dcm.items()}
    assert all(not e for errors in report.values() for e in errors.values()), report
