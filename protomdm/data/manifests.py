"""Dataset manifests (``data_manifests/*.yaml``): what a published dataset's copy must hold, and a check of a user's
copy against it (``protomdm check-data``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ..errors import UserError


def manifest_names() -> list[str]:
    """The datasets that ship a manifest (``protomdm/data/manifests/<name>.yaml``)."""
    folder = resources.files("protomdm.data").joinpath("manifests")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


@dataclass
class Check:
    """One line of the report. ``status``: ok, partial (fewer rows/images than the full release), missing,
    malformed, or optional (an optional item that is absent)."""

    item: str
    status: str
    detail: str


def load_manifest(dataset: str) -> dict:
    names = manifest_names()
    if dataset not in names:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(names)}")
    return yaml.safe_load(resources.files("protomdm.data").joinpath("manifests").joinpath(f"{dataset}.yaml").read_text())


def _count_rows(path: Path, columns: list[str] | None, fields: int | None) -> tuple[int, str | None]:
    """Data rows of a CSV (after its header) or of a whitespace table; the first problem found, if any."""
    if path.is_dir():
        return sum(1 for _ in path.rglob("*.png")), None
    with path.open(newline="") as f:
        if path.suffix == ".csv":
            reader = csv.reader(f)
            header = next(reader, [])
            if columns and header[:len(columns)] != columns:
                return 0, f"columns {header[:len(columns)]}, expected {columns}"
            return sum(1 for row in reader if any(c.strip() for c in row)), None
        n = 0
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if fields and len(line.split(maxsplit=fields - 1)) != fields:
                return n, f"line {line_no} has {len(line.split())} fields, expected {fields}"
            n += 1
        return n, None


def check_data(dataset: str, root: str | Path) -> list[Check]:
    """Compare the copy at ``root`` with the dataset's manifest, item by item."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"`root` {root} is not a folder")
    manifest = load_manifest(dataset)
    checks = []
    for spec in manifest["files"]:
        found = next((root / p for p in spec["path"] if (root / p).exists()), None)
        name = " or ".join(spec["path"])
        if found is None:
            checks.append(Check(name, "optional" if spec.get("optional") else "missing",
                                f"needed for {spec['needed_for']}"))
            continue
        n, problem = _count_rows(found, spec.get("columns"), spec.get("fields"))
        want = spec.get("rows")
        if problem:
            checks.append(Check(str(found.relative_to(root)) if found.is_relative_to(root) else str(found),
                                "malformed", problem))
        elif want and n < want:
            checks.append(Check(found.name, "partial", f"{n} of {want} rows"))
        elif want and n > want:
            checks.append(Check(found.name, "malformed", f"{n} rows, the release has {want}"))
        else:
            checks.append(Check(found.name, "ok", f"{n} {'rows' if found.is_file() else 'files'}"))
    img = manifest["images"]
    n = sum(1 for _ in root.glob(img["glob"]))
    status = "missing" if n == 0 else "partial" if n < img["count"] else "ok"
    checks.append(Check(f"images ({img['glob']})", status, f"{n} of {img['count']} images"))
    return checks
