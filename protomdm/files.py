"""Writing files safely: a half-written file never takes the place of a complete one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
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
    import json

    from .errors import UserError

    path = Path(out) / RUN_SETTINGS
    settings = json.loads(json.dumps(settings, default=str))  # tuples as lists, paths as strings
    if resume and path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            before = None
        if not isinstance(before, dict):
            raise UserError(f"`resume`: {path} is not the settings file protomdm wrote; start again with `overwrite`")
        for key in sorted(set(before) | set(settings)):
            if before.get(key) != settings.get(key):
                raise UserError(f"`resume` with other settings than the run in {out}: {key} was "
                                f"{json.dumps(before.get(key))[:80]}, now {json.dumps(settings.get(key))[:80]}; "
                                "resume with the same settings, or start again with --overwrite")
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1), encoding="utf-8"))
