"""Peak memory (max RSS) and seconds of `protomdm localize` on inputs at the accepted size limit, one process each,
beside the same command on a 64 x 64 image (the interpreter, torch and the libraries alone): the README's limits
table.

    python scripts/memory_limits.py [--side 5120] [--method upsample] [--table-rows 1000000] [--out memory.md]

``--table-rows N`` adds `protomdm train` on an N-row label table whose images are all missing: what reading,
checking and splitting the table costs (train then stops: "the train split has no readable image").

The model is the demo's architecture at its input size (untrained: memory does not depend on the weights). Linux
only (``os.wait4`` reports the child's peak RSS).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_factory import make_dicom  # noqa: E402

from protomdm.data.loaded import MAX_PIXELS  # noqa: E402


def inputs(folder: Path, side: int) -> dict[str, Path]:
    """One file per input kind, ``side`` x ``side`` pixels of noise (incompressible: the worst case for decoders),
    made in a child process: a child forked from a parent that held the arrays would count them in its peak."""
    made = _kinds(folder)
    subprocess.run([sys.executable, __file__, "--make", str(folder), "--side", str(side)], check=True)
    return made


def _kinds(folder: Path) -> dict[str, Path]:
    return {"64 x 64 PNG (baseline)": folder / "small.png", "PNG, 8-bit grey": folder / "grey8.png",
            "PNG, 16-bit grey": folder / "grey16.png", "PNG, RGB": folder / "rgb.png",
            "DICOM, 12-bit in 16 (window)": folder / "scan.dcm", "NPY, float64 grey": folder / "f64.npy",
            "NPY, float32 RGB": folder / "f32rgb.npy"}


def _make(folder: Path, side: int) -> None:
    made = _kinds(folder)
    rng = np.random.default_rng(0)
    grey8 = (rng.random((side, side)) * 255).astype(np.uint8)
    Image.fromarray(grey8[:64, :64]).save(made["64 x 64 PNG (baseline)"])
    Image.fromarray(grey8).save(made["PNG, 8-bit grey"])
    Image.fromarray((rng.random((side, side)) * 65535).astype(np.uint16)).save(made["PNG, 16-bit grey"])
    Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)).save(made["PNG, RGB"])
    make_dicom(made["DICOM, 12-bit in 16 (window)"], (rng.random((side, side)) * 4095).astype(np.uint16),
               bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    np.save(made["NPY, float64 grey"], rng.random((side, side)))
    np.save(made["NPY, float32 RGB"], rng.random((side, side, 3), dtype=np.float32))


def _big_table(folder: Path, n: int) -> Path:
    """A ``dataset: table`` config over an ``n``-row table (path, two labels, split, patient) of missing images."""
    import yaml

    rows = "".join(f"img/{i:07d}.png,disk|square,{'test' if i % 5 == 0 else 'train'},P{i // 3}\n" for i in range(n))
    (folder / "big.csv").write_text("path,labels,split,patient\n" + rows)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "synthetic_protopnet.yaml").read_text())
    config["data"] = {"dataset": "table", "root": str(folder), "table": "big.csv", "cache_dir": "none"}
    (folder / "big.yaml").write_text(yaml.safe_dump(config))
    return folder / "big.yaml"


def peak(cmd: list[str]) -> tuple[float, float, int]:
    """``(peak RSS in MB, seconds, exit status)`` of ``cmd`` run as a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=int(MAX_PIXELS ** 0.5), help="image side (default: the limit)")
    ap.add_argument("--method", default="upsample", help="localizer (its cost is at the model's input size)")
    ap.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    ap.add_argument("--table-rows", type=int, default=0, help="also measure train's reading of a table this long")
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # the child that writes the inputs
    args = ap.parse_args()
    if args.make:
        return _make(args.make, args.side)
    exe = [sys.executable, "-c", "import sys; from protomdm.cli import main; sys.exit(main())"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ckpt = d / "m.pt"
        subprocess.run([*exe, "init-model", "--model", "protopnet", "--backbone", "tiny", "--classes", "disk,square",
                        "--img-size", "64", "--out", str(ckpt)], check=True, stdout=subprocess.DEVNULL)
        lines = [f"| input ({args.side} x {args.side}) | localize: peak RSS | s | --report: peak RSS | s |",
                 "|---|---|---|---|---|"]
        for kind, path in inputs(d, args.side).items():
            cells = []
            for extra in ([], ["--report"]):
                mb, s, code = peak([*exe, "localize", "--ckpt", str(ckpt), "--image", str(path), "--out",
                                    str(d / f"out-{path.stem}{len(extra)}"), "--method", args.method, "--quiet",
                                    *extra])
                cells += [f"{mb:,.0f} MB" + ("" if code == 0 else f" (exit {code})"), f"{s:.1f}"]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        if args.table_rows:
            mb, s, _ = peak([*exe, "train", "--config", str(_big_table(d, args.table_rows)), "--out", str(d / "run"),
                             "--quiet"])
            lines.append(f"| label table, {args.table_rows:,} rows (train reads, checks and splits it) | "
                         f"{mb:,.0f} MB | {s:.1f} | | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
