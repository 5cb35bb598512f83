"""Writing files safely: a half-written file never takes the place of a complete one; tables and records that a
spreadsheet or a strict JSON parser opens without surprises."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .errors import UserError


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions an ordinary new file would (``0666`` less the umask), not the owner-only mode of
    the temporary file, so colleagues and PACS importers can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


RUN_SETTINGS = "run.json"


def check_run_settings(out: str | Path, settings: dict, resume: bool) -> None:
    """Record a run's ``settings`` (a JSON-safe dict) in ``out/run.json``; with ``resume``, refuse settings that
    differ from the recorded ones, naming the first that does, so that one results table never mixes two runs."""
    path = Path(out) / RUN_SETTINGS
    settings = json.loads(json.dumps(settings, default=str))  # tuples as lists, paths as strings
    if resume and path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            before = None
        if not isinstance(before, dict):
            raise UserError(f"`resume`: {path} is not the settings file protomdm wrote; start again with `overwrite`")
        found = _first_difference(before, settings)
        if found is not None:
            key, was, now = found
            raise UserError(f"`resume` with other settings than the run in {out}: {key} was {_shown(was)}, now "
                            f"{_shown(now)}; resume with the same settings, or start again with --overwrite")
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1), encoding="utf-8"))


def _first_difference(before: object, now: object, key: str = "") -> tuple[str, object, object] | None:
    """The first setting (a dotted key, down to the leaf of nested settings) whose values differ, or None."""
    if isinstance(before, dict) and isinstance(now, dict):
        for k in sorted(set(before) | set(now), key=str):
            found = _first_difference(before.get(k), now.get(k), f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    return None if before == now else (key, before, now)


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_writable(out_dir: str | Path, names: Iterable[str] = (), overwrite: bool = False) -> Path:
    """Create ``out_dir`` if needed; refuse (UserError) if any of ``names`` exists there and not ``overwrite``, or if
    the folder cannot be created or written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out} exists and is not a folder")
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise UserError(f"{out} already holds {', '.join(clash)}; pass `overwrite` to replace, or choose another `out`")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"output folder {out} is not writable")
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON's ``null``), numpy and torch values as
    plain Python ones, and other objects as their ``str``: strict JSON parsers reject bare ``NaN``/``Infinity``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors
        return json_safe(value.tolist())
    return str(value)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """``data`` as indented, strict JSON (no NaN/Infinity: see :func:`json_safe`), written atomically."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


# --------------------------------------------------------------------------- CSV tables
# OWASP's CSV-injection rule: a cell that begins with one of these is a formula to a spreadsheet, so it is written
# with a leading apostrophe (shown as text, not run). Numbers (-0.5, +3) stay as they are; a cell that already
# begins with an apostrophe gets one more, so that read_csv gives back exactly what was written.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell that no spreadsheet executes (see :func:`read_cell` for the way back)."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith("'") or (value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value)):
        return "'" + value
    return value


def read_cell(cell: str) -> str:
    """The value that :func:`csv_cell` wrote as ``cell``."""
    if cell.startswith("'") and cell[1:].startswith(("'", *_FORMULA_START)):
        return cell[1:]
    return cell


def _writer(f, columns: Sequence[str]) -> csv.DictWriter:
    return csv.DictWriter(f, [csv_cell(c) for c in columns])


def _safe(rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    return ({csv_cell(k): csv_cell(v) for k, v in row.items()} for row in rows)


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """A CSV table with a header, written atomically; ``rows`` are dicts keyed by ``columns``; formula-like cells
    neutralised (:func:`csv_cell`)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = _writer(f, columns)
            w.writeheader()
            w.writerows(_safe(rows))

    return atomic_write(path, write)


def append_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` to a CSV table and flush them to disk, so a killed process loses no finished row."""
    with open(path, "a", newline="", encoding="utf-8") as f:
        _writer(f, columns).writerows(_safe(rows))
        f.flush()
        os.fsync(f.fileno())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV table that :func:`write_csv` wrote, cells as they were given to it; none if the file does
    not exist."""
    if not Path(path).exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{read_cell(k): read_cell(v or "") for k, v in r.items()} for r in csv.DictReader(f)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is not a CSV table protomdm wrote ({type(e).__name__}); move it away or pass "
                        "--overwrite to start again") from None
