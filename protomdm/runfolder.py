"""A run folder: the output folder of a long, resumable run (a folder of images, an evaluation, a training run).

One place for its lifecycle: refuse an earlier run's results unless asked to resume or overwrite, create and test
the folder, hold a lock while the run writes (one run per folder: a second is refused in one line), remove what a
killed run left half-written, record the settings (``run.json``) and, on a fresh start, remove old tables.
"""

from __future__ import annotations

import os
import shutil
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence

from .distributed import DistEnv, rank_parts
from .errors import UserError
from .files import check_run_settings, check_writable, read_csv, write_csv

LOCK_NAME = ".protomdm.lock"
ERRORS_LOG = "errors.log"  # the traceback of every item's failure that was not a plain user mistake
STAGING = ".tmp-"  # prefix of the folders an item is written into before it is renamed into place


@contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold ``out``'s lock while the block runs; :class:`UserError` at once if another process holds it.

    The lock is the operating system's (``filelock``: ``fcntl.flock`` or ``msvcrt.locking``), so a killed run
    releases it; the empty lock file stays in the folder.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(out / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"another protomdm run is writing to {out}; wait until it ends, or choose another `out`") \
            from None
    except OSError as e:
        raise UserError(f"output folder {out} is not writable ({e.strerror})") from None
    try:
        yield out
    finally:
        lock.release()


@contextmanager
def run_folder(out_dir: str | Path, tables: Sequence[str], settings: dict, *, resume: bool = False,
               overwrite: bool = False, dist: DistEnv = DistEnv(), folders: Sequence[str] = ()) -> Iterator[Path]:
    """Open ``out_dir`` for a run whose results are the CSV ``tables`` (the first is the one resume reads) and the
    subfolders ``folders`` (removed on a fresh start, as the tables are); yield it.

    Rank 0 takes the lock and sets the folder up; the other ranks of a torchrun launch wait for it, then share it.
    """
    out = Path(out_dir)
    with (_main_setup(out, tables, settings, resume, overwrite, folders) if dist.is_main else nullcontext(out)):
        dist.barrier()  # the others start once the folder is set up
        yield out


@contextmanager
def _main_setup(out: Path, tables: Sequence[str], settings: dict, resume: bool, overwrite: bool,
                folders: Sequence[str]) -> Iterator[Path]:
    check_writable(out)
    try:
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output folder {out} is not writable ({e.strerror})") from None
    with run_lock(out):
        results = out / tables[0]
        if (results.exists() or rank_parts(results)) and not (resume or overwrite):
            raise UserError(f"{results} exists from an earlier run; pass `resume` to finish it or `overwrite` to "
                            "redo it")
        for stale in out.glob(f"{STAGING}*"):
            shutil.rmtree(stale, ignore_errors=True)
        check_run_settings(out, settings, resume)
        if not resume:
            for name in tables:
                for p in [out / name, *rank_parts(out / name)]:
                    p.unlink(missing_ok=True)
            for name in folders:
                shutil.rmtree(out / name, ignore_errors=True)
        yield out


def all_rows(table: Path) -> list[dict[str, str]]:
    """The rows of a results table and of the per-rank parts a torchrun run left beside it, in that order."""
    return [r for p in [table, *rank_parts(table)] for r in read_csv(p)]


def merge_rank_parts(table: Path, columns: Sequence[str], key: Callable[[dict[str, str]], Hashable],
                     prefer: Callable[[dict[str, str], dict[str, str]], bool] = lambda old, new: True,
                     keep: Callable[[dict[str, str]], bool] = lambda row: True,
                     order: Callable[[dict[str, str]], Any] | None = None) -> list[dict[str, str]]:
    """Fold the per-rank parts into ``table``: one row per ``key`` (a later row replaces an earlier one when
    ``prefer(old, new)``; rows failing ``keep`` are dropped), sorted by ``order`` if given; the parts are removed.
    Returns the rows written."""
    rows: dict[Hashable, dict[str, str]] = {}
    for r in all_rows(table):
        if keep(r) and (key(r) not in rows or prefer(rows[key(r)], r)):
            rows[key(r)] = r
    out = sorted(rows.values(), key=order) if order else list(rows.values())
    write_csv(table, columns, out)
    for p in rank_parts(table):
        p.unlink()
    return out


def _one_line(e: BaseException) -> str:
    """An exception as one line, cut at a word boundary."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror + (f": {e.filename}" if e.filename else "")
    if not isinstance(e, (UserError, OSError)):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= 300 else text[:300].rsplit(" ", 1)[0] + " ..."


def item_failure(out: Path, rel: str, e: BaseException) -> str:
    """The one line that says why the item at ``rel`` failed (for a results table); a failure that is not a user
    mistake or an OS error (a bug, an unforeseen input) also leaves its traceback in ``out/errors.log``."""
    why = _one_line(e)
    if not isinstance(e, (UserError, OSError)):
        with open(out / ERRORS_LOG, "a", encoding="utf-8", errors="backslashreplace") as log:
            log.write(f"--- {rel}\n{''.join(traceback.format_exception(e))}")
    return why if rel in why else f"{rel}: {why}"
