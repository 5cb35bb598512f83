"""Folder runs: localize every image under a folder, one output subfolder per image, a ``results.csv`` row per image,
and ``--resume`` after an interruption.

Each image's outputs are written to a hidden temporary folder and renamed into place when complete, and its row is
appended to ``results.csv`` only after that, so an interrupted run never leaves a partial result that looks finished.
A bad image fails alone: its row says why and the run goes on. An image localized to nothing (an empty or flat
heatmap, or an activation that does not depend on the image) is finished with status ``empty`` and the reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.dicom import DICOM_SUFFIXES
from ..data.images import IMAGE_SUFFIXES, read_image
from ..distributed import DistEnv, rank_parts
from ..errors import UserError
from ..explain.localization import model_device
from ..explain.mdm import images_per_search
from ..files import append_csv, atomic_write, write_csv
from ..report.names import is_dicom, output_stem, safe_name
from ..runfolder import STAGING, all_rows, item_failure, merge_rank_parts, run_folder
from .localize import LocalizeJob

COLUMNS = ("input", "output", "model", "method", "prototype", "class_name", "score", "box_x0", "box_y0", "box_x1",
           "box_y1", "seconds", "status", "error")
RESULTS = "results.csv"
FAILURES = "failures.txt"
FINISHED = ("ok", "empty")  # statuses of images that are done (``--resume`` skips them)


def find_inputs(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively, sorted): PNG, JPEG, TIFF, BMP, NPY, DICOM (``.dcm`` or no suffix).

    Hidden files and folders (``.DS_Store``, ``.git``, our own temporary folders) and DICOMDIR indexes are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"`input` {root} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and name.upper() != "DICOMDIR" and (
                    p.suffix.lower() in {*IMAGE_SUFFIXES, *DICOM_SUFFIXES, ""}):
                found.append(p)
    return found


def path_hash(rel: str) -> str:
    return hashlib.sha256(rel.encode()).hexdigest()[:8]


def folder_name(rel: str) -> str:
    """The output subfolder for an input at ``rel`` (its path below the input folder): separators become ``__``
    and other unsafe characters ``_``; whenever that changed the name (or it is long), a short hash of ``rel`` is
    added, so that two inputs never share a folder (``x y.png`` and ``x_y.png``, ``sub/a.png`` and ``sub__a.png``)."""
    safe = safe_name(rel.replace("/", "__"))
    return safe if safe == rel and len(safe) <= 100 else f"{safe[:100]}-{path_hash(rel)}"


def _printable(rel: str) -> str:
    """``rel`` with any bytes that are not UTF-8 (a file name from another system) written as ``\\xNN``."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class FolderResult:
    out_dir: Path
    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    empty: list[tuple[str, str]] = field(default_factory=list)  # every empty result in results.csv, earlier ones too

    @property
    def failed(self) -> int:
        return len(self.failures)


def _complete(row: dict[str, str]) -> bool:
    """A row a run finished writing: an input and a status."""
    return row.get("status") in (*FINISHED, "failed") and bool(row.get("input"))


def merge_results(out: Path, order: list[str]) -> list[dict[str, str]]:
    """Write ``results.csv`` with one row per input (finished beats failed, later beats earlier) in ``order``, and
    ``failures.txt``; remove the per-rank parts."""
    rank = {rel: i for i, rel in enumerate(order)}
    rows = merge_rank_parts(out / RESULTS, COLUMNS, key=lambda r: r["input"], keep=_complete,
                            prefer=lambda old, new: new["status"] in FINISHED or old["status"] not in FINISHED,
                            order=lambda r: (rank.get(r["input"], len(rank)), r["input"]))
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        atomic_write(out / FAILURES, lambda tmp: Path(tmp).write_text(
            "".join(f"{r['input']}\t{r['error']}\n" for r in failed)))
    elif (out / FAILURES).exists():
        (out / FAILURES).unlink()
    return rows


def localize_folder(job: LocalizeJob, input_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
                    overwrite: bool = False, progress: bool = True, inputs: list[Path] | None = None,
                    dist: DistEnv = DistEnv(), batch_images: int | None = None) -> FolderResult:
    """Localize every image under ``input_dir`` (or the given ``inputs`` below it) into ``out_dir``.

    Writes ``out_dir/NAME/`` per image (see :func:`protomdm.report.names.output_names`), ``results.csv`` (columns
    :data:`COLUMNS`, one row per input in path order) and ``failures.txt``. With ``resume``, images whose row says
    ``ok`` and whose folder exists are skipped and failed ones are retried; without it an existing ``results.csv`` is
    refused unless ``overwrite``.

    ``batch_images`` images share one localizer search (default: :func:`~protomdm.explain.mdm.images_per_search`);
    if that search fails, each is localized alone, so that only the image at fault fails.

    Under torchrun (``dist``), rank ``r`` takes every ``world``-th input, appends its rows to
    ``results.rankR.csv``, and rank 0 merges them into ``results.csv`` once all ranks are done. A run that died
    leaves the parts behind; ``resume`` (with any number of ranks) reads them and redoes only what is missing.
    """
    root = Path(input_dir)
    files = find_inputs(root) if inputs is None else list(inputs)
    if not files:
        raise UserError(f"no images (PNG, JPEG, TIFF, NPY, DICOM) found under {root}")
    out = Path(out_dir)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise UserError(f"`out` {out} lies inside `input` {root}; choose an output folder outside the inputs")
    with run_folder(out, [RESULTS], job.settings(), resume=resume, overwrite=overwrite, dist=dist):
        per_search = images_per_search(batch_images, model_device(job.model), job.model)
        return _localize_all(job, root, out, files, progress, dist, per_search)


def _localize_all(job: LocalizeJob, root: Path, out: Path, files: list[Path], progress: bool, dist: DistEnv,
                  per_search: int) -> FolderResult:
    """The work of :func:`localize_folder` in its open run folder."""
    from tqdm.auto import tqdm

    results = out / RESULTS
    rels = {p: _printable(p.relative_to(root).as_posix()) for p in files}
    on_disk = [r for r in all_rows(out / RESULTS) if _complete(r)]
    finished = {r["input"] for r in on_disk if r["status"] in FINISHED and (out / r["output"]).is_dir()}
    part = dist.part(results)
    if not dist.active:
        write_csv(results, COLUMNS, [r for r in on_disk if r["input"] in finished and r["status"] in FINISHED])
        for p in rank_parts(results):
            p.unlink()
    elif not part.exists():
        write_csv(part, COLUMNS, [])
    mine = dist.shard(files)
    todo = [p for p in mine if rels[p] not in finished]
    res = FolderResult(out, skipped=len(mine) - len(todo))
    model = job.model
    model_name = f"{model.config.architecture}/{model.config.backbone}"
    bar = tqdm(total=len(todo), desc="images" + (f" (rank {dist.rank})" if dist.active else ""), unit="img",
               disable=not progress, position=dist.rank if dist.active else None)

    def fail(row: dict, rel: str, e: BaseException) -> None:
        row.update(status="failed", error=item_failure(out, rel, e))
        res.failures.append((rel, row["error"]))

    def finish(row: dict, t0: float) -> None:
        row["seconds"] = f"{time.perf_counter() - t0:.2f}"
        append_csv(part, COLUMNS, [row])
        bar.update()
        bar.set_postfix(done=res.done, failed=res.failed)

    for start in range(0, len(todo), per_search):
        t0 = time.perf_counter()
        ready = []  # (rel, row, image): read, to be localized together
        for path in todo[start:start + per_search]:
            rel = rels[path]
            row = dict.fromkeys(COLUMNS, "")
            row.update(input=rel, model=model_name, method=job.method)
            try:
                ready.append((rel, row, read_image(path)))
            except Exception as e:  # noqa: BLE001 - one input's failure, whatever it is, is that input's alone
                fail(row, rel, e)
                finish(row, t0)
        try:
            found: list = job.localize_images([image for _, _, image in ready]) if ready else []
        except Exception:  # noqa: BLE001 - find the image at fault: each alone
            found = []
            for _, _, image in ready:
                try:
                    found += job.localize_images([image])
                except Exception as e:  # noqa: BLE001
                    found.append(e)
        share = (time.perf_counter() - t0) / max(1, len(ready))
        for (rel, row, image), result in zip(ready, found):
            t0 = time.perf_counter() - share
            name = folder_name(rel)
            tmp = out / f"{STAGING}{name}"
            try:
                if isinstance(result, Exception):
                    raise result
                stem = output_stem(image)
                if is_dicom(image):  # named by its SOP Instance UID, never by the path (which may name the patient)
                    name = f"{stem}-{path_hash(rel)}"
                    tmp = out / f"{STAGING}{name}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                j, loc, probability = result
                r = job.write(image, j, loc, probability, tmp, stem).record
                final = out / name
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                box = r["box"] or ["", "", "", ""]
                row.update(output=name, prototype=r["prototype"], class_name=r["class_name"],
                           score=f"{r['score']:.6g}", box_x0=box[0], box_y0=box[1], box_x1=box[2], box_y1=box[3],
                           status=r["status"], error=r["reason"])
                res.done += 1
            except Exception as e:  # noqa: BLE001 - one input's failure, whatever it is, is that input's alone
                fail(row, rel, e)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            finish(row, t0)
    bar.close()
    shares = dist.all_gather((res.done, res.skipped, res.failures))  # also: every rank has finished its share
    if dist.is_main:
        rows = merge_results(out, list(rels.values()))
        res.done, res.skipped = sum(d for d, _, _ in shares), sum(k for _, k, _ in shares)
        res.failures = [f for _, _, fs in shares for f in fs]
        res.empty = [(r["input"], r["error"]) for r in rows if r["status"] == "empty"]
    return res
