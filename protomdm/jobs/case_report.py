"""``protomdm localize --report``: a case report per scan (one image, or every image under a folder with an index
page), from the checkpoint's model and its recorded prototype sources.

A folder is a run folder (:mod:`protomdm.runfolder`): ``reports.csv`` holds a row per image (keyed by a hash of its
path, which may name the patient), so ``resume`` after an interruption skips the images whose report is written and
retries the failed ones; the index lists every report, earlier ones too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import to_dict
from ..data.images import read_image, to_model_input
from ..device import resolve_device
from ..errors import UserError
from ..explain.case import explain_case
from ..explain.localization import model_device
from ..explain.registry import MethodConfigs, method_settings, with_mdm
from ..files import append_csv, atomic_write, check_writable, read_csv, write_csv
from ..models import load_model_and_extra
from ..report.case import report_names, write_case_report
from ..report.gallery import push_records
from ..report.html import esc, page
from ..report.names import is_dicom, output_stem
from ..runfolder import item_failure, run_folder
from .folder import find_inputs, folder_name, path_hash

INDEX = "index.html"
FAILURES = "failures.txt"
REPORTS = "reports.csv"
REPORT_COLUMNS = ("key", "input", "folder", "html", "explained", "top", "probability", "status", "error")


@dataclass
class CaseReportRun:
    out_dir: Path
    reports: list[dict[str, Any]] = field(default_factory=list)  # input, stem, explained class, probability, files
    failures: list[tuple[str, str]] = field(default_factory=list)


def case_reports(ckpt: str | Path, out_dir: str | Path, *, image: str | Path | None = None,
                 input_dir: str | Path | None = None, top_k: int = 5, method: str = "mdm",
                 method_configs: MethodConfigs | None = None, class_name: str | None = None, device: str = "auto",
                 overwrite: bool = False, resume: bool = False, progress: bool = False, mdm: Any = None
                 ) -> CaseReportRun:
    """Write a case report (``{stem}_report.html/.png/.json``) for ``image``, or for every image under
    ``input_dir`` (one subfolder each, ``reports.csv`` and ``index.html``); a bad image in a folder fails alone and
    is listed. ``resume`` finishes an interrupted folder run with the same settings. ``method_configs``: the
    method's settings by name (``mdm=`` is the older name of its ``"mdm"`` entry)."""
    if (image is None) == (input_dir is None):
        raise UserError("give one `image` or an `input` folder")
    if resume and input_dir is None:
        raise UserError("`resume` applies to a folder of images (`input`), not to one image")
    config = method_settings(method, with_mdm(method_configs, mdm).get(method))  # unknown or bad: said now
    if top_k < 1:
        raise UserError(f"`top_k` must be at least 1, got {top_k}")
    model, extra = load_model_and_extra(ckpt, resolve_device(device))
    records = push_records(extra)
    run = CaseReportRun(Path(out_dir))

    def one(path: Path, base: Path, rel: str | None) -> None:
        img = read_image(path)
        stem = output_stem(img)
        folder = "" if rel is None else (f"{stem}-{path_hash(rel)}" if is_dicom(img) else folder_name(rel))
        dest = check_writable(base / folder, report_names(stem, is_dicom(img)).values(), overwrite or resume)
        x = to_model_input(img, model.config).to(model_device(model))
        report = explain_case(model, x, top_k, method, class_name, records, progress=progress and rel is None,
                              config=config)
        shown = stem if is_dicom(img) else (rel or path.name)  # a DICOM's path may name the patient
        files = write_case_report(report, img, dest, stem, f"Case report: {shown}")
        best = report.classes[0]
        run.reports.append({"input": shown, "folder": folder, "explained": report.explained_class,
                            "top": best["name"], "probability": best["probability"], "files": files,
                            "notes": report.notes})

    if image is not None:
        one(Path(image), Path(out_dir), None)
        return run
    root = Path(input_dir or "")
    inputs = find_inputs(root)
    if not inputs:
        raise UserError(f"no images under `input` {root}")
    base = check_writable(out_dir, [INDEX, FAILURES], overwrite or resume)
    settings = {"checkpoint": str(ckpt), "method": method, "top_k": top_k, "class_name": class_name,
                "method_settings": None if config is None else to_dict(config)}
    with run_folder(base, [REPORTS], settings, resume=resume, overwrite=overwrite):
        earlier = [r for r in read_csv(base / REPORTS) if r.get("status") == "ok" and (base / r["html"]).is_file()]
        write_csv(base / REPORTS, REPORT_COLUMNS, earlier)  # the finished reports; failed ones are retried
        done = {r["key"] for r in earlier}
        for path in tqdm(inputs, desc="case reports", unit="image", disable=not progress):
            rel = path.relative_to(root).as_posix()
            if path_hash(rel) in done:
                continue
            row = dict.fromkeys(REPORT_COLUMNS, "")
            row["key"] = path_hash(rel)
            try:
                one(path, base, rel)
                r = run.reports[-1]
                row.update(input=r["input"], folder=r["folder"], explained=r["explained"], top=r["top"],
                           probability=f"{r['probability']:.6g}", status="ok",
                           html=(Path(r["folder"]) / r["files"]["html"].name).as_posix())
            except Exception as e:  # noqa: BLE001 - one image's failure, whatever it is, is that image's alone
                run.failures.append((rel, item_failure(base, rel, e)))
                row.update(status="failed", error=f"see {FAILURES}")  # which names the path; this table does not
            append_csv(base / REPORTS, REPORT_COLUMNS, [row])
        (base / FAILURES).unlink(missing_ok=True)
        if run.failures:
            atomic_write(base / FAILURES, lambda tmp: Path(tmp).write_text(
                "".join(f"{rel}\t{why}\n" for rel, why in run.failures), encoding="utf-8"))
        write_index(read_csv(base / REPORTS), len(run.failures), base / INDEX)
    return run


def write_index(rows: list[dict[str, str]], failed: int, path: Path) -> Path:
    """The folder run's index page: one line per finished report of ``reports.csv`` (a link) and the number of
    images that failed (their paths, which may name patients, stay in ``failures.txt``)."""
    done = [r for r in rows if r["status"] == "ok"]
    lines = "".join(
        f'<tr><td><a href="{esc(r["html"])}">{esc(r["input"])}</a></td>'
        f'<td>{esc(r["top"])}</td><td class="num">{float(r["probability"]):.1%}</td></tr>' for r in done)
    body = (f"<h1>Case reports ({len(done)})</h1><table><thead><tr><th>image</th><th>most probable</th>"
            f"<th>probability</th></tr></thead><tbody>{lines}</tbody></table>"
            + (f"<p class=\"note\">{failed} image(s) could not be read; they are listed, with the reason, "
               f"in {FAILURES} beside this page.</p>" if failed else ""))
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page("Case reports", body), encoding="utf-8"))

