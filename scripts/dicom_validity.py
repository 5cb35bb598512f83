"""dciodvfy's error count for every DICOM object ``protomdm localize`` writes, on projection radiographs and secondary
captures (the sources of tests/dicom_validation.py), beside the source's own count.

    python scripts/dicom_validity.py [--decoders] [--show]

Needs dicom3tools (``apt-get install dicom3tools``); ``pip install pydicom-data`` adds real CRs. ``--show`` prints
each output's error lines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_validation import dciodvfy_errors, validation_sources  # noqa: E402

from protomdm.config import ModelConfig  # noqa: E402
from protomdm.data.images import read_image  # noqa: E402
from protomdm.jobs.localize import LocalizeJob  # noqa: E402
from protomdm.models import build_model  # noqa: E402
from protomdm.report.names import output_stem  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", action="store_true", help="include a JPEG 2000 source (needs protomdm[dicom])")
    ap.add_argument("--show", action="store_true", help="print every error line")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny", class_names=("a", "b"), prototypes_per_class=2, in_channels=1,
                                    mean=(0.5,), std=(0.25,), img_size=(48, 48))).eval()
    job = LocalizeJob(model, "tiny.pt", method="upsample")
    with tempfile.TemporaryDirectory() as tmp:
        sources = validation_sources(Path(tmp) / "src", decoders=args.decoders)
        kinds = None
        for desc, src in sources.items():
            out = Path(tmp) / output_stem(read_image(src))
            out.mkdir()
            image = read_image(src)
            res = job.run(image, out, output_stem(image))
            dcm = {k: p for k, p in res.files.items() if p.suffix == ".dcm"}
            if kinds is None:
                kinds = list(dcm)
                print("| source | source's errors | " + " | ".join(kinds) + " |")
                print("|---" * (len(kinds) + 2) + "|")
            errors = {k: dciodvfy_errors(p) for k, p in dcm.items()}
            print(f"| {desc} | {len(dciodvfy_errors(src))} | " + " | ".join(str(len(errors[k])) for k in kinds) + " |")
            if args.show:
                for k, lines in errors.items():
                    for line in lines:
                        print(f"    {k}: {line}")


if __name__ == "__main__":
    main()
