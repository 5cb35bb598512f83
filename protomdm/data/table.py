"""Your own collection: images listed in a table (CSV/TSV, read with pandas), with labels, an optional split and
optional ground-truth boxes and masks; or an image folder ``root/<class>/*``. See :class:`~protomdm.data.config.DataConfig`
for the keys, and the README for the RSNA Pneumonia and VinDr-CXR recipes.

Every problem with the files is said in one line with the file and line it is on: a label outside the model's
classes, a box of negative size, a table with none of the declared columns, an empty split. Rows of one image are
merged (the union of their labels); exact duplicate rows are dropped and counted. A row whose image is missing or
unreadable is skipped, counted and listed, and the run goes on.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig, check_finite, require
from ..errors import UserError
from ..geometry import Box, box_mask
from .cache import ImageCache, default_cache_dir, load_pixels, to_channels
from .config import DataConfig
from .dicom import is_dicom_file
from .groundtruth import EvalSample, Finding, Shard, Skipped, resize_mask
from .images import IMAGE_SUFFIXES, load_npy, pixels_to_tensor, read_image
from .manifests import Check
from .rle import decode_siim_rle
from .sources import DatasetSource, EvalOptions, register_dataset

LOG = logging.getLogger(__name__)  # what training should know (skipped images, the split chosen): the CLI prints it

TABLE_COLUMNS = ("path", "labels", "split", "patient")
MASK_COLUMNS = ("image", "label", "mask")
SPLITS = ("train", "val", "test")  # val: what training selects its best model on (test where there is none)
NO_FINDING = {"no finding", "nofinding", "normal", "none"}  # labels that mean "none of the classes"


UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")


@dataclass
class TableOptions:
    """The ``table`` dataset's options: your own collection, one row per image (or per finding) in a CSV/TSV
    (``table``), with optional ground-truth boxes (``boxes``, in ``box_format`` ``xyxy`` or ``xywh``, original
    pixels) and masks (``masks``); without ``table``, ``root/<class>/*`` is read as an image folder. ``columns``
    renames any of the default column names (table: ``path``, ``labels``, ``split``, ``patient``; boxes:
    ``image``, ``label``, ``x0 y0 x1 y1`` or ``x y w h``; masks: ``image``, ``label``, ``mask``; one 0/1 column per
    class is looked up by the class's name); ``path_format`` turns a table's path value into a file path
    (``"{}.dcm"``). Without a split column, a seeded ``test_fraction`` of the images (of the patients, with a
    patient column) is held out. ``other_labels``: what a label outside the model's classes is, ``error`` (named
    with its line) or ``ignore``.

    CheXpert / MIMIC-CXR tables: one column per finding holding ``1``, ``0``, ``-1`` (uncertain) or blank (not
    mentioned = negative). ``uncertain`` says what ``-1`` means (Irvin et al. 2019): ``ones`` (U-Ones: positive),
    ``zeros`` (U-Zeros: negative) or ``ignore`` (U-Ignore: that finding is left out of the loss for that image);
    without it a ``-1`` is refused. ``views`` keeps only these views (``[frontal]``; read from a ``Frontal/Lateral``,
    ``ViewPosition`` or ``view`` column, or from CheXpert's ``view1_frontal`` file names; ``frontal`` takes PA and
    AP). Without a patient column the patient is read from the path (CheXpert's ``patientNNNNN``, MIMIC-CXR's
    ``pNNNNNNNN`` folders, or the first group of the regex ``patient_pattern``), so that no patient is on both
    sides of the seeded split. ``split_file``: MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-split.csv`` (``dicom_id, ...,
    split``; ``train``/``validate``/``test``, the image file named by its ``dicom_id``) as the split. A ``val``
    split (``val``, ``valid``, ``validate``; a folder's ``val/``) is what training selects its best model on.
    """

    table: str | None = None
    boxes: str | None = None
    masks: str | None = None
    box_format: str = "xyxy"
    columns: dict[str, str] = field(default_factory=dict)
    path_format: str = "{}"
    label_separator: str = "|"
    test_fraction: float = 0.2
    other_labels: str = "error"
    uncertain: str | None = None
    views: tuple[str, ...] = ()
    patient_pattern: str | None = None
    split_file: str | None = None

    def __post_init__(self) -> None:
        check_finite(self)
        require(self.box_format in ("xyxy", "xywh"), f"data.box_format must be xyxy or xywh, got {self.box_format!r}")
        require(0 < self.test_fraction < 1, f"data.test_fraction must lie strictly between 0 and 1, got {self.test_fraction}")
        require(self.other_labels in ("error", "ignore"), f"data.other_labels must be error or ignore, got {self.other_labels!r}")
        require(self.path_format.count("{}") == 1 and not set(self.path_format.replace("{}", "")) & set("{}"),
                f"data.path_format must hold one {{}} (the path value) and no other braces, got "
                f"{self.path_format!r}")
        require(bool(self.label_separator), "data.label_separator must not be empty")
        require(self.uncertain in (None, *UNCERTAIN_POLICIES),
                f"data.uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {self.uncertain!r}")
        require(all(isinstance(v, str) and v.strip() for v in self.views), "data.views: every entry must be a view name")
        require(self.patient_pattern is None or _regex_problem(self.patient_pattern) is None,
                f"data.patient_pattern is not a regular expression ({_regex_problem(self.patient_pattern or '')})")
        require(all(isinstance(v, str) and v for v in self.columns.values()), "data.columns: every value must be a column name")


def _regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as e:
        return str(e)
    return None


@dataclass(slots=True)
class Row:
    """One image of the collection. ``key``: the table's path value (boxes and masks name the image by it)."""

    key: str
    path: Path
    labels: frozenset[int]
    line: int  # in the table; for an image folder, the place in its sorted listing
    split: str | None = None
    patient: str | None = None
    listed: str = "line"  # "item" for an image folder
    uncertain: frozenset[int] = frozenset()  # findings left out of the loss for this image (U-Ignore)

    @property
    def name(self) -> str:
        """How outputs name the image: its key, or, for a DICOM (by content, whatever its suffix), its place in the
        table (``line 12 (DICOM)``), because a DICOM's key is often the patient's MRN or accession number."""
        return f"{self.listed} {self.line} (DICOM)" if is_dicom_file(self.path) else self.key

    def reason(self, why: str) -> str:
        """``why`` (a message about this image) without the path or key, where :attr:`name` hides them."""
        if self.name == self.key:
            return why
        return why.replace(str(self.path), "the image").replace(self.key, "the image")


@dataclass
class Table:
    """A parsed collection: images, their boxes ``(class, box, line)`` and masks ``(class, path, line)`` by key."""

    rows: list[Row]
    class_names: tuple[str, ...]
    boxes: dict[str, list[tuple[int, Box, int]]] = field(default_factory=dict)
    masks: dict[str, list[tuple[int, Path | SiimRle, int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    box_file: str = "boxes"

    @property
    def multilabel(self) -> bool:
        return any(len(r.labels) != 1 or r.uncertain for r in self.rows)

    def split(self, which: str) -> list[Row]:
        """The rows of split ``which`` (``train`` or ``test``); an empty split is a UserError."""
        rows = [r for r in self.rows if r.split == which]
        if not rows:
            raise UserError(f"the {which} split is empty ({len(self.rows)} images in all); check the split column "
                            "or test_fraction")
        return rows


def _column(data: DataConfig, name: str) -> str:
    return data.columns.get(name, name)


def read_frame(path: Path, what: str) -> pd.DataFrame:
    """A CSV/TSV (by suffix; gzipped too) as strings, column names stripped; unreadable or with a duplicated column
    name: a UserError naming ``what`` and the file."""
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a readable {'TSV' if sep == chr(9) else 'CSV'} table "
                        f"({' '.join(str(e).split())[:160]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    header = _header(path, sep)
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise UserError(f"{what} {path.name}: {len(dup)} column name(s) appear twice in its header (columns "
                        f"{', '.join(str(header.index(c) + 1) for c in dup)}); give each column its own name")
    return frame


def _header(path: Path, sep: str) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return [c.strip() for c in next(csv.reader(f, delimiter=sep), [])]


def _path_problem(value: str) -> str | None:
    """Why a table's path value cannot name a file on any file system, or None."""
    if "\0" in value:
        return "a NUL byte in the path"
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in value.replace("\\", "/").split("/")):
        return "a path component over 255 bytes"
    return None


def _count(frame: pd.DataFrame) -> str:
    """How many columns a table's header has; error messages name files, lines and settings, never a file's content
    (a config may name any file as a table)."""
    n = len(frame.columns)
    return f"{n} column{'s' if n != 1 else ''} (open the file to see their names)"


def label_key(label: str) -> str:
    """A label as compared with class names: case and runs of spaces ignored."""
    return " ".join(str(label).split()).lower()


def _class_keys(class_names: tuple[str, ...]) -> dict[str, int]:
    return {label_key(c): i for i, c in enumerate(class_names)}


def _class_of(label: str, classes: dict[str, int], data: DataConfig, where: str) -> int | None:
    """The class index of a label (see :func:`label_key`); None for "No Finding" or an ignored other label."""
    key = label_key(label)
    if key in classes:
        return classes[key]
    if key in NO_FINDING or not key:
        return None
    if data.other_labels == "ignore":
        return None
    raise UserError(f"{where}: label {label!r} is not one of the model's classes ({', '.join(classes)}); set "
                    "data.other_labels: ignore to skip such labels")


def _labels_of(frame: pd.DataFrame, data: DataConfig, class_names: tuple[str, ...], name: str
               ) -> tuple[list[frozenset[int]], list[frozenset[int]], list[str]]:
    """Each row's labels, its findings left out of the loss (U-Ignore) and notes on how the cells were read."""
    classes = _class_keys(class_names)
    col = _column(data, "labels")
    if col in frame.columns:
        sep = data.label_separator
        out, seen = [], {}  # one frozenset per distinct label text: a million rows share a few dozen
        for i, text in enumerate(frame[col]):
            if text not in seen:
                found = {_class_of(t, classes, data, f"{name} line {i + 2}") for t in str(text).split(sep)}
                seen[text] = frozenset(c for c in found if c is not None)
            out.append(seen[text])
        return out, [frozenset()] * len(out), []
    per_class = [_column(data, c) for c in class_names]
    if all(c in frame.columns for c in per_class):
        return _flag_columns(frame, per_class, data, name)
    raise UserError(f"{name} has no label column: neither {col!r} (names separated by {data.label_separator!r}) nor "
                    f"one 1/0/-1/blank column per class ({', '.join(per_class)}); its header has {_count(frame)}")


POSITIVE, NEGATIVE, UNCERTAIN = ("1", "1.0", "true"), ("0", "0.0", "false"), ("-1", "-1.0")
FLAGS = (*POSITIVE, *NEGATIVE, *UNCERTAIN, "")  # a blank cell: not mentioned (CheXpert), read as negative
POLICY_NAMES = {"ones": "positive (U-Ones)", "zeros": "negative (U-Zeros)", "ignore": "left out of the loss (U-Ignore)"}


def _flag_columns(frame: pd.DataFrame, columns: list[str], data: DataConfig, name: str
                  ) -> tuple[list[frozenset[int]], list[frozenset[int]], list[str]]:
    """One column per finding: 1, 0, -1 (uncertain, read by ``data.uncertain``) or blank (negative)."""
    values = frame[columns].apply(lambda s: s.str.strip().str.lower())
    bad = ~values.isin(FLAGS).to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(f"{name} line {r + 2}: column {columns[c]!r} holds {frame[columns[c]].iloc[r]!r}, not 1, 0, "
                        "-1 or blank")
    hot, unsure = values.isin(POSITIVE).to_numpy(), values.isin(UNCERTAIN).to_numpy()
    if unsure.any() and data.uncertain is None:
        r, c = np.argwhere(unsure)[0]
        raise UserError(f"{name} line {r + 2}: column {columns[c]!r} holds {frame[columns[c]].iloc[r]!r} "
                        "(uncertain); say what it means with data.uncertain: ones, zeros or ignore (CheXpert's U-Ones, "
                        "U-Zeros, U-Ignore)")
    notes = []
    for what, mask in (("uncertain (-1) cells, read as " + POLICY_NAMES.get(data.uncertain or "", ""), unsure),
                       ("blank cells, read as negative (not mentioned)", (values == "").to_numpy())):
        counts = mask.sum(0)
        if counts.any():
            notes.append(f"{name}: {int(counts.sum())} {what}: "
                         + ", ".join(f"{c} {int(n)}" for c, n in zip(columns, counts) if n))
    if data.uncertain == "ones":
        hot = hot | unsure
    if data.uncertain != "ignore":
        unsure = np.zeros_like(unsure)
    seen: dict[bytes, tuple[frozenset[int], frozenset[int]]] = {}
    pairs = [seen.setdefault(h.tobytes() + u.tobytes(), (frozenset(np.flatnonzero(h).tolist()),
                                                         frozenset(np.flatnonzero(u).tolist())))
             for h, u in zip(hot, unsure)]
    return [p[0] for p in pairs], [p[1] for p in pairs], notes


def read_table(data: DataConfig, class_names: tuple[str, ...]) -> Table:
    """Parse the collection ``data`` describes (a table under ``data.root``, or an image folder)."""
    root = Path(data.root or "")
    if not data.root or not root.is_dir():
        raise UserError(f"dataset folder not found: {data.root or '(none given)'} (the root of the table's paths)")
    table = _read_folder(root, data, class_names) if not data.table else _read_rows(root, data, class_names)
    _assign_splits(table, data)
    if data.boxes:
        _read_boxes(table, root, data)
    if data.masks:
        _read_masks(table, root, data)
    return table


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def _read_rows(root: Path, data: DataConfig, class_names: tuple[str, ...]) -> Table:
    path = _resolve(root, data.table)
    return _rows_from_frame(read_frame(path, "data.table"), path.name, root, data, class_names)


def _rows_from_frame(frame: pd.DataFrame, name: str, root: Path, data: DataConfig, class_names: tuple[str, ...]
                    ) -> Table:
    """The collection a table ``frame`` (read from the file ``name``, all cells strings) lists: see
    :class:`~protomdm.data.config.DataConfig` for its columns and options."""
    pcol = _column(data, "path")
    if pcol not in frame.columns:
        raise UserError(f"{name} has no {pcol!r} column (the image paths; rename it with data.columns.path); its "
                        f"header has {_count(frame)}")
    labels, uncertain, notes = _labels_of(frame, data, class_names, name)
    scol, gcol = _column(data, "split"), _column(data, "patient")
    dup = frame.duplicated(keep="first").to_numpy()
    if dup.any():
        lines = [str(i + 2) for i in np.flatnonzero(dup)]
        notes.append(f"{name}: {len(lines)} duplicate row(s) dropped (line {', '.join(lines[:10])}"
                     f"{' ...' if len(lines) > 10 else ''})")
    keep = _view_filter(frame, data, name, pcol, notes)
    patients = (frame[gcol].tolist() if gcol in frame.columns
                else _patients_from_paths(frame[pcol].tolist(), data, name, notes))
    rows: dict[str, Row] = {}
    bad: list[str] = []
    nothing = [None] * len(frame)  # columns one at a time, not a dict per row: a million rows stay small
    columns = zip(frame[pcol].tolist(), frame[scol].tolist() if scol in frame.columns else nothing, patients)
    for i, (raw_key, raw_split, raw_patient) in enumerate(columns):
        if dup[i] or not keep[i]:
            continue
        key = str(raw_key).strip()
        if not key:
            raise UserError(f"{name} line {i + 2}: empty {pcol!r}")
        split = _split_name(raw_split, f"{name} line {i + 2}")
        patient = str(raw_patient).strip() or None if raw_patient is not None else None
        if key in rows:  # another row of the same image: its labels join; the split and patient must agree
            first = rows[key]
            if (split, patient) != (first.split, first.patient):
                raise UserError(f"{name} lines {first.line} and {i + 2}: image {key!r} is given two splits or "
                                "patients")
            first.labels |= labels[i]
            first.uncertain = (first.uncertain | uncertain[i]) - first.labels
            continue
        problem = _path_problem(data.path_format.replace("{}", key))
        if problem:
            bad.append(f"line {i + 2} ({problem})")
            continue
        rows[key] = Row(key, _resolve(root, data.path_format.replace("{}", key)), labels[i], i + 2, split, patient,
                        uncertain=uncertain[i] - labels[i])
    if bad:
        notes.append(f"{name}: {len(bad)} row(s) skipped, their path cannot name a file: {', '.join(bad[:10])}"
                     f"{' ...' if len(bad) > 10 else ''}")
    if not rows:
        raise UserError(f"{name} lists no images" + (" of the views in data.views" if not keep.any() else ""))
    table = Table(list(rows.values()), tuple(class_names), notes=notes)
    if data.split_file:
        _apply_split_file(table, root, data)
    return table


SPLIT_NAMES = {"train": "train", "test": "test", "val": "val", "valid": "val", "validate": "val",
               "validation": "val"}
VIEW_COLUMNS = ("Frontal/Lateral", "ViewPosition", "view")  # CheXpert, MIMIC-CXR's metadata, a user's own
VIEW_GROUPS = {"frontal": {"frontal", "pa", "ap", "ap axial", "pa ll", "ap ll", "postero-anterior",
                           "antero-posterior"},
               "lateral": {"lateral", "ll", "rl", "lao", "rao", "lpo", "xtable lateral", "left lateral"}}


def _split_name(value: object, where: str) -> str | None:
    """``train``, ``val`` or ``test`` for a split cell (``valid``/``validate``/``validation`` are ``val``)."""
    if value is None or not str(value).strip():
        return None
    split = SPLIT_NAMES.get(str(value).strip().lower())
    if split is None:
        raise UserError(f"{where}: split {value!r} is none of train, val (valid, validate) or test")
    return split


def _view_filter(frame: pd.DataFrame, data: DataConfig, name: str, pcol: str, notes: list[str]) -> np.ndarray:
    """Which rows are of a view in ``data.views`` (all of them without it)."""
    if not data.views:
        return np.ones(len(frame), bool)
    given = data.columns.get("view")
    col = given if given else next((c for c in VIEW_COLUMNS if c in frame.columns), None)
    if col is not None and col not in frame.columns:
        raise UserError(f"{name} has no {col!r} column (data.columns.view); its header has {_count(frame)}")
    if col is not None:
        views = frame[col].str.strip().str.lower().tolist()
    else:  # CheXpert's file names: view1_frontal.jpg
        found = frame[pcol].str.lower().str.extract(r"_(frontal|lateral)\.[a-z0-9]+$", expand=False)
        if found.isna().all():
            raise UserError(f"data.views is given, but {name} has no view column ({', '.join(VIEW_COLUMNS)}, or name "
                            "yours with data.columns.view) and its file names do not say the view (view1_frontal.jpg)")
        views = found.fillna("").tolist()
    wanted = {w.strip().lower() for w in data.views}
    accept = set(wanted).union(*(VIEW_GROUPS.get(w, set()) for w in wanted))
    keep = np.array([v in accept for v in views], bool)
    if not keep.all():
        notes.append(f"{name}: {int((~keep).sum())} of {len(keep)} rows left out, not of the views "
                     f"{', '.join(sorted(wanted))} (data.views)")
    return keep


PATIENT_PATTERNS = {"CheXpert's patientNNNNN folders": r"(?:^|/)(patient\d+)/",
                    "MIMIC-CXR's pNNNNNNNN folders": r"(?:^|/)(p\d{8})/"}


def _patients_from_paths(keys: list[str], data: DataConfig, name: str, notes: list[str]) -> list[str | None]:
    """The patient of each path, by ``data.patient_pattern`` (its first group, or the whole match) or by CheXpert's
    and MIMIC-CXR's patient folders; None where no pattern matches (each such image is its own patient)."""
    patterns = {"data.patient_pattern": data.patient_pattern} if data.patient_pattern else PATIENT_PATTERNS
    for what, pattern in patterns.items():
        rx = re.compile(pattern)
        found = [rx.search(str(k).replace("\\", "/")) for k in keys]
        if any(found):
            out = [m.group(1) if m and rx.groups else m.group(0) if m else None for m in found]
            misses = sum(m is None for m in found)
            notes.append(f"{name}: patients read from the paths ({what}): {len(set(out) - {None})} patients"
                         + (f"; {misses} path(s) match no patient, each its own patient" if misses else ""))
            return out
    if data.patient_pattern:
        raise UserError(f"data.patient_pattern {data.patient_pattern!r} matches none of {name}'s paths")
    return [None] * len(keys)


def _apply_split_file(table: Table, root: Path, data: DataConfig) -> None:
    """MIMIC-CXR-JPG's split file (``dicom_id, study_id, subject_id, split``) as the split: each image by its file
    name's stem (the ``dicom_id``); images it does not list are left out and counted."""
    path = _resolve(root, data.split_file or "")
    frame = read_frame(path, "data.split_file")
    idcol, scol = _column(data, "dicom_id"), _column(data, "split")
    missing = [c for c in (idcol, scol) if c not in frame.columns]
    if missing:
        raise UserError(f"{path.name} lacks the column(s) {', '.join(missing)} (MIMIC-CXR-JPG's split file: dicom_id, "
                        f"study_id, subject_id, split); its header has {_count(frame)}")
    splits = {str(k).strip(): _split_name(v, f"{path.name} line {i + 2}")
              for i, (k, v) in enumerate(zip(frame[idcol], frame[scol]))}
    kept = []
    for r in table.rows:
        r.split = splits.get(Path(r.key).stem)
        if r.split is not None:
            kept.append(r)
    if not kept:
        raise UserError(f"{path.name} names none of the table's images (by the dicom_id of their file names)")
    if len(kept) < len(table.rows):
        table.notes.append(f"{path.name}: {len(table.rows) - len(kept)} image(s) it does not list left out")
    table.rows = kept


def _read_folder(root: Path, data: DataConfig, class_names: tuple[str, ...]) -> Table:
    """``root/<class>/*`` (or ``root/train/<class>/*``, ``root/val/<class>/*`` and ``root/test/<class>/*``, as
    Kaggle's chest X-ray folders): single-label."""
    bases = [(root / d, SPLIT_NAMES[d]) for d in _split_dirs(root)] or [(root, None)]
    classes = _class_keys(class_names)
    rows = []
    for base, split in bases:
        for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            c = _class_of(d.name, classes, data, f"folder {d}")
            if c is None:
                continue
            for f in sorted(d.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and (f.suffix.lower() in IMAGE_SUFFIXES
                                                                   or is_dicom_file(f)):
                    rows.append(Row(f.relative_to(root).as_posix(), f, frozenset({c}), len(rows) + 1, split,
                                    listed="item"))
    if not rows:
        raise UserError(f"no data.table given and no class folders ({', '.join(class_names)}) with images under "
                        f"{root}")
    return Table(rows, tuple(class_names))


def _split_dirs(root: Path) -> list[str]:
    """The split folders of an image folder (``train``, ``val``/``valid``/``validation``, ``test``)."""
    return [d for d in SPLIT_NAMES if (root / d).is_dir()]


def _assign_splits(table: Table, data: DataConfig) -> None:
    """Rows without a split: a seeded ``test_fraction`` of the patients (each image its own patient without a
    patient column) goes to test, so that no patient is on both sides."""
    todo = [r for r in table.rows if r.split is None]
    if not todo:
        return
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in todo:
        groups[r.patient or f"image:{r.key}"].append(r)
    names = sorted(groups)
    random.Random(data.seed).shuffle(names)
    n_test = max(1, round(data.test_fraction * len(names))) if len(names) > 1 else 0
    for k, g in enumerate(names):
        for r in groups[g]:
            r.split = "test" if k < n_test else "train"


def _read_boxes(table: Table, root: Path, data: DataConfig) -> None:
    path = _resolve(root, data.boxes)
    frame = read_frame(path, "data.boxes")
    name = path.name
    table.box_file = name
    coords = ("x0", "y0", "x1", "y1") if data.box_format == "xyxy" else ("x", "y", "w", "h")
    need = [_column(data, "image"), *(_column(data, c) for c in coords)]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise UserError(f"{name} lacks the column(s) {', '.join(missing)} (box_format {data.box_format}; rename with "
                        f"data.columns); its header has {_count(frame)}")
    lcol = _column(data, "label")
    if lcol not in frame.columns and len(table.class_names) > 1:
        raise UserError(f"{name} has no {lcol!r} column, and the model has several classes; its header has "
                        f"{_count(frame)}")
    classes = _class_keys(table.class_names)
    keys = {r.key for r in table.rows}
    for i, rec in enumerate(frame.to_dict("records")):
        where = f"{name} line {i + 2}"
        key = str(rec[need[0]]).strip()
        values = [str(rec[c]).strip() for c in need[1:]]
        if not any(values):
            continue  # a row without a box (RSNA's negatives)
        try:
            a, b, c, d = (float(v) for v in values)
        except ValueError:
            raise UserError(f"{where}: box {values} is not four numbers") from None
        x0, y0, x1, y1 = (a, b, c, d) if data.box_format == "xyxy" else (a, b, a + c, b + d)
        if not (x1 > x0 and y1 > y0) or min(a, b) < 0:
            raise UserError(f"{where}: box {values} ({data.box_format}) has a negative or zero size or lies left of "
                            "or above the image")
        if key not in keys:
            raise UserError(f"{where}: image {key!r} is not in the table")
        label = str(rec[lcol]) if lcol in frame.columns else table.class_names[0]
        cls = _class_of(label, classes, data, where)
        if cls is not None:
            table.boxes.setdefault(key, []).append((cls, (x0, y0, x1, y1), i + 2))


def _read_masks(table: Table, root: Path, data: DataConfig) -> None:
    """Mask files by image (``image, label, mask``), or SIIM-ACR Pneumothorax's ``train-rle.csv`` (``ImageId,
    EncodedPixels``: the image by its key or its file name's stem, the finding the model's pneumothorax class)."""
    path = _resolve(root, data.masks)
    frame = read_frame(path, "data.masks")
    name = path.name
    if {"ImageId", "EncodedPixels"} <= set(frame.columns):
        return _read_siim_rle(table, frame, name)
    need = [_column(data, c) for c in MASK_COLUMNS]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise UserError(f"{name} lacks the column(s) {', '.join(missing)} (or give SIIM's ImageId, EncodedPixels); "
                        f"its header has {_count(frame)}")
    classes = _class_keys(table.class_names)
    keys = {r.key for r in table.rows}
    for i, rec in enumerate(frame.to_dict("records")):
        key = str(rec[need[0]]).strip()
        if key not in keys:
            raise UserError(f"{name} line {i + 2}: image {key!r} is not in the table")
        cls = _class_of(str(rec[need[1]]), classes, data, f"{name} line {i + 2}")
        if cls is not None:
            table.masks.setdefault(key, []).append((cls, _resolve(root, str(rec[need[2]]).strip()), i + 2))


@dataclass(frozen=True)
class SiimRle:
    """One region of SIIM's ``train-rle.csv``, decoded at the image's size when it is read."""

    text: str


def _read_siim_rle(table: Table, frame: pd.DataFrame, name: str) -> None:
    classes = _class_keys(table.class_names)
    cls = classes.get("pneumothorax", 0 if len(table.class_names) == 1 else None)
    if cls is None:
        raise UserError(f"{name} is SIIM-ACR's run-length table (pneumothorax), but the model has no class named "
                        "Pneumothorax")
    by_key = {r.key: r.key for r in table.rows}
    by_key.update({Path(r.key).stem: r.key for r in table.rows if Path(r.key).stem not in by_key})
    for i, (image, text) in enumerate(zip(frame["ImageId"], frame["EncodedPixels"])):
        key = by_key.get(str(image).strip())
        if key is None:
            raise UserError(f"{name} line {i + 2}: its ImageId names no image of the table (by path or file name)")
        if str(text).strip() not in ("", "-1"):  # -1: no pneumothorax, nothing to localize
            table.masks.setdefault(key, []).append((cls, SiimRle(str(text).strip()), i + 2))


def read_mask(path: Path) -> np.ndarray:
    """A ground-truth mask file (PNG or another image, or NPY): non-zero = inside."""
    problem = _path_problem(str(path))
    if problem:
        raise UserError(f"a mask path has {problem}")
    if path.suffix.lower() == ".npy":
        a = load_npy(path, "mask")
        if a.ndim == 3 and (a.shape[0] == 1 or a.shape[-1] in (1, 3, 4)):  # one channel first, or channels last
            a = a[0] if a.shape[0] == 1 else a.max(-1)
        if a.ndim != 2 or min(a.shape) == 0:
            raise UserError(f"{path}: a mask must be a 2-D array (H, W), got shape {a.shape}")
        return a != 0
    try:
        px = read_image(path).pixels
    except UserError:
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable mask ({type(e).__name__})") from None
    return (px if px.ndim == 2 else px.max(-1)) > 0


class TableDataset(Dataset):
    """Training items ``(image (C, H, W) in [0, 1], target, empty mask (F, H, W))`` of table rows, read through the
    image cache (or directly without one). Rows whose image cannot be read are left out (``skipped``)."""

    def __init__(self, rows: list[Row], model: ModelConfig, multilabel: bool, cache_dir: Path | None,
                 progress: bool = False) -> None:
        self.size, self.channels = tuple(model.img_size), model.in_channels
        self.num_classes, self.multilabel = len(model.class_names), multilabel
        self.skipped: list[tuple[str, str]] = []
        if cache_dir is not None:
            cache = ImageCache(cache_dir, [r.path for r in rows], self.size, self.channels)
            bad = cache.prepare(progress)
            self.skipped = [(rows[i].name, rows[i].reason(why)) for i, why in sorted(bad.items())]
            self.index = [i for i in range(len(rows)) if i not in bad]
            self.cache: ImageCache | None = cache
        else:
            missing = {i for i, r in enumerate(rows) if not r.path.is_file()}
            self.skipped = [(rows[i].name, "no such file") for i in sorted(missing)]
            self.index = [i for i in range(len(rows)) if i not in missing]
            self.cache = None
        self.rows = rows

    def __len__(self) -> int:
        return len(self.index)

    def targets(self) -> torch.Tensor:
        """Every item's multi-hot target ``(N, F)``, without reading the images (see :meth:`target`)."""
        hot = torch.zeros(len(self.index), self.num_classes)
        for k, i in enumerate(self.index):
            self.target(self.rows[i], out=hot[k])
        return hot

    def target(self, row: Row, out: torch.Tensor | None = None) -> torch.Tensor:
        """A row's multi-hot target ``(F,)`` (written into ``out`` if given): 1 present, 0 absent, NaN left out of
        the loss (U-Ignore)."""
        target = torch.zeros(self.num_classes) if out is None else out
        target[list(row.labels)] = 1
        target[list(row.uncertain)] = float("nan")
        return target

    def source(self, k: int) -> str:
        """Item ``k``'s name for a prototype's provenance (:attr:`Row.name`: never a DICOM's path)."""
        return self.rows[self.index[k]].name

    def __getitem__(self, k: int):
        i = self.index[k]
        row = self.rows[i]
        pixels = self.cache[i] if self.cache is not None else load_pixels(row.path, self.size, self.channels)
        target = self.target(row) if self.multilabel else next(iter(row.labels))
        return pixels, target, torch.zeros(self.num_classes, *self.size, dtype=torch.uint8)


@register_dataset("table", options=TableOptions)
class TableSource(DatasetSource):
    """A user's collection: a table of images and labels (with boxes and masks), or an image folder."""

    per_finding = True

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        self._table: Table | None = None

    def table(self, class_names: tuple[str, ...]) -> Table:
        if self._table is None or self._table.class_names != tuple(class_names):
            self._table = read_table(self.data, tuple(class_names))
        return self._table

    def cache_dir(self) -> Path | None:
        d = self.data.cache_dir
        return None if d is not None and d.lower() == "none" else Path(d) if d else default_cache_dir()

    def training(self, model: ModelConfig) -> tuple[Dataset, Dataset, bool]:
        table = self.table(model.class_names)
        single = not table.multilabel and not model.multilabel  # the trainer sets it for multi-label-only models
        held = "val" if any(r.split == "val" for r in table.rows) else "test"
        if held == "val":
            LOG.info("note: the best model is selected on the val split; the test split is kept for evaluation")
        sets = [TableDataset(table.split(s), model, not single, self.cache_dir()) for s in ("train", held)]
        for ds, s in zip(sets, ("train", held)):
            if ds.skipped:
                shown = "; ".join(f"{k}: {why}" for k, why in ds.skipped[:5])
                LOG.warning(f"{s}: skipped {len(ds.skipped)} unreadable or missing image(s): {shown}"
                            + (" ..." if len(ds.skipped) > 5 else ""))
            if len(ds) == 0:
                raise UserError(f"the {s} split has no readable image")
        for note in table.notes:
            LOG.info(f"note: {note}")
        return sets[0], sets[1], not single

    def evaluation(self, model: ModelConfig, options: EvalOptions, shard: Shard = (0, 1)
                   ) -> Iterator[EvalSample | Skipped]:
        table = self.table(model.class_names)
        if not table.boxes and not table.masks:
            raise UserError("evaluation needs ground truth: give data.boxes or data.masks")
        rows = [r for r in table.split("test") if r.key in table.boxes or r.key in table.masks]
        if not rows:
            raise UserError("no image of the test split has a ground-truth box or mask")
        for k, row in enumerate(rows[:options.limit] if options.limit is not None else rows):
            if k % shard[1] != shard[0]:
                continue
            try:
                yield self._sample(row, table, model)
            except UserError as e:
                yield Skipped(row.name, row.reason(str(e)))

    def _sample(self, row: Row, table: Table, model: ModelConfig) -> EvalSample:
        px = read_image(row.path).pixels
        h, w = px.shape[:2]
        size = tuple(model.img_size)
        sy, sx = size[0] / h, size[1] / w
        findings: dict[int, Finding] = {}
        for c, (x0, y0, x1, y1), line in table.boxes.get(row.key, []):
            if x1 > w + 0.5 or y1 > h + 0.5:
                raise UserError(f"{table.box_file} line {line}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the "
                                f"{w}x{h} image {row.key}")
            box = (int(x0 * sx), int(y0 * sy), max(int(x0 * sx) + 1, round(x1 * sx)),
                   max(int(y0 * sy) + 1, round(y1 * sy)))
            truth = box_mask(box, size)
            f = findings.setdefault(c, Finding(model.class_names[c], c, np.zeros(size, bool)))
            f.truth = f.truth | truth
            f.boxes.append(box)
        for c, mpath, line in table.masks.get(row.key, []):
            if isinstance(mpath, SiimRle):
                try:
                    mask = decode_siim_rle(mpath.text, (h, w))
                except UserError as e:
                    raise UserError(f"masks line {line}: {e}") from None
            else:
                mask = read_mask(mpath)
            if mask.shape[:2] != (h, w):
                raise UserError(f"masks line {line}: mask {mpath.name} is {mask.shape[1]}x{mask.shape[0]}, the image "
                                f"{w}x{h}")
            f = findings.setdefault(c, Finding(model.class_names[c], c, np.zeros(size, bool)))
            f.truth = f.truth | resize_mask(mask, size)
        pixels = to_channels(pixels_to_tensor(px, size), model.in_channels)
        return EvalSample(row.name, pixels, list(findings.values()))

    def check(self) -> list[Check]:
        d = self.data
        table = read_table(d, self._class_names())
        counts = {s: sum(r.split == s for r in table.rows) for s in SPLITS}
        out = [Check(d.table or "image folder", "ok", f"{len(table.rows)} images, "
                     + " / ".join(f"{n} {s}" for s, n in counts.items() if n or s != "val"))]
        out += [Check(f"{s} split", "malformed", "empty: check the split column or test_fraction")
                for s in ("train", "test") if not counts[s]]
        missing = [r for r in table.rows if not r.path.is_file()]
        out.append(Check("image files", "partial" if missing else "ok",
                         f"{len(table.rows) - len(missing)} of {len(table.rows)} found"
                         + (f"; missing e.g. {missing[0].path}" if missing else "")))
        if d.boxes:
            out.append(Check(d.boxes, "ok", f"{sum(map(len, table.boxes.values()))} boxes on {len(table.boxes)} images"))
        if d.masks:
            out.append(Check(d.masks, "ok", f"{sum(map(len, table.masks.values()))} masks on {len(table.masks)} images"))
        out += [Check("note", "ok", n) for n in table.notes]
        return out

    def _class_names(self) -> tuple[str, ...]:
        """check-data has no model: every label the table holds is a class."""
        d = self.data
        if not d.table:
            root = Path(d.root or "")
            base = next((root / s for s in _split_dirs(root)), root)
            return tuple(sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")))
        path = _resolve(Path(d.root or ""), d.table)
        frame = read_frame(path, "data.table")
        col = _column(d, "labels")
        if col not in frame.columns:  # one column per class: the columns holding mostly 1, 0, -1 or blank cells
            reserved = {_column(d, c) for c in TABLE_COLUMNS}
            cells = {c: frame[c].str.strip().str.lower() for c in frame.columns
                     if c not in reserved and label_key(c) not in NO_FINDING}
            flags = [c for c, v in cells.items() if v[v != ""].isin(FLAGS).mean() > 0.5]  # bad cells: said later
            if not flags:
                raise UserError(f"{path.name} has no label column: neither {col!r} (names separated by "
                                f"{d.label_separator!r}) nor 1/0/-1/blank columns; its header has {_count(frame)}")
            return tuple(flags)
        names = {" ".join(t.split()) for v in frame[col] for t in str(v).split(d.label_separator) if t.strip()}
        return tuple(sorted(n for n in names if n.lower() not in NO_FINDING))
