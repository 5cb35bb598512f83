"""Where the data come from: :class:`DataConfig`, read by every dataset source (:mod:`protomdm.data.sources`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..config import check_finite, require


@dataclass
class DataConfig:
    """Where the training and evaluation data come from: a registered dataset (``synthetic`` needs no files;
    ``nih``, ``cub`` and ``table`` read ``root``; see :mod:`protomdm.data.sources`).

    ``table``: your own collection, one row per image (or per finding) in a CSV/TSV (``table``), with optional
    ground-truth boxes (``boxes``, in ``box_format`` ``xyxy`` or ``xywh``, original pixels) and masks (``masks``);
    without ``table``, ``root/<class>/*`` is read as an image folder. ``columns`` renames any of the default column
    names (table: ``path``, ``labels``, ``split``, ``patient``; boxes: ``image``, ``label``, ``x0 y0 x1 y1`` or
    ``x y w h``; masks: ``image``, ``label``, ``mask``; one 0/1 column per class is looked up by the class's name);
    ``path_format`` turns a table's path value into a file path (``"{}.dcm"``). Without a split column, a seeded
    ``test_fraction`` of the images (of the patients, with a patient column) is held out. ``other_labels``: what a
    label outside the model's classes is, ``error`` (named with its line) or ``ignore``. ``cache_dir``: decoded
    images at the model's input size are cached there (default ``~/.cache/protomdm``; ``none``: no cache).

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

    dataset: str = "synthetic"
    root: str | None = None
    num_train: int = 600  # synthetic only
    num_test: int = 300  # synthetic only
    seed: int = 0  # synthetic: the train set uses seed, the test set seed + 1; table: the split's seed
    multilabel: bool = False  # synthetic only (table and nih: multi-label; cub: single-label)
    distractors: int = 2  # synthetic only
    flip: bool = True  # random horizontal flips in training
    batch_size: int = 32
    num_workers: int = 0
    table: str | None = None
    boxes: str | None = None
    masks: str | None = None
    box_format: str = "xyxy"
    columns: dict[str, str] = field(default_factory=dict)
    path_format: str = "{}"
    label_separator: str = "|"
    test_fraction: float = 0.2
    other_labels: str = "error"
    cache_dir: str | None = None
    uncertain: str | None = None
    views: tuple[str, ...] = ()
    patient_pattern: str | None = None
    split_file: str | None = None
    split: str = "val"  # chexlocalize: which of its sets (val or test) is evaluated

    def __post_init__(self) -> None:
        check_finite(self)
        require(bool(self.dataset), "data.dataset must name a dataset")
        require(self.dataset == "synthetic" or bool(self.root), f"data.root is required for dataset {self.dataset}")
        require(self.num_train >= 1 and self.num_test >= 1, "data.num_train and data.num_test must be >= 1")
        require(self.batch_size >= 1 and self.num_workers >= 0, "data.batch_size must be >= 1, num_workers >= 0")
        require(self.box_format in ("xyxy", "xywh"), f"data.box_format must be xyxy or xywh, got {self.box_format!r}")
        require(0 < self.test_fraction < 1, f"data.test_fraction must lie strictly between 0 and 1, got {self.test_fraction}")
        require(self.other_labels in ("error", "ignore"), f"data.other_labels must be error or ignore, got {self.other_labels!r}")
        require(self.path_format.count("{}") == 1 and not set(self.path_format.replace("{}", "")) & set("{}"),
                f"data.path_format must hold one {{}} (the path value) and no other braces, got "
                f"{self.path_format!r}")
        require(bool(self.label_separator), "data.label_separator must not be empty")
        require(self.uncertain in (None, *UNCERTAIN_POLICIES),
                f"data.uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {self.uncertain!r}")
        require(self.split in ("val", "test"), f"data.split must be val or test, got {self.split!r}")
        require(all(isinstance(v, str) and v.strip() for v in self.views), "data.views: every entry must be a view name")
        require(self.patient_pattern is None or _regex_problem(self.patient_pattern) is None,
                f"data.patient_pattern is not a regular expression ({_regex_problem(self.patient_pattern or '')})")
        require(all(isinstance(v, str) and v for v in self.columns.values()), "data.columns: every value must be a column name")


UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")


def _regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as e:
        return str(e)
    return None
