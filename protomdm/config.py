"""Typed configs: small dataclasses that round-trip through plain dicts and YAML.

Every config validates itself in ``__post_init__`` and :func:`from_dict` rejects unknown keys, so a typo in a YAML
file is one clear :class:`~protomdm.errors.ConfigError` before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")

BASELINES = ("zero", "blur", "mean")
PRECISIONS = ("fp32", "bf16", "fp16")


MAX_CONFIG_BYTES = 1 << 20  # a config file is settings, not data
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple = 2, 6, 6, 6
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _short(value: Any) -> str:
    """A bounded repr for error messages: never expands a large or deeply shared value in full."""
    return _REPR.repr(value)


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_finite(obj: Any) -> None:
    """Refuse NaN and infinite numbers in any float (or tuple of floats) field of the dataclass ``obj``."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        for x in (v if isinstance(v, tuple) else (v,)):
            require(not isinstance(x, float) or math.isfinite(x), f"{f.name} must be a finite number, got {x}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a plain YAML value to the annotated type ``tp`` (nested dataclasses, tuples, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {_short(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        require(isinstance(value, (list, tuple)), f"{where}: expected a list, got {_short(value)}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        require(isinstance(value, dict), f"{where}: expected a mapping, got {_short(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: expected a number, got {_short(value)}")
        require(math.isfinite(value), f"{where}: expected a finite number, got {value}")
        return float(value)
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an integer, got {_short(value)}")
        return value
    if tp is bool:
        require(isinstance(value, bool), f"{where}: expected true or false, got {_short(value)}")
        return value
    if tp is str:
        require(isinstance(value, str), f"{where}: expected a string, got {_short(value)}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types."""
    require(isinstance(data, dict), f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    require(not unknown, f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required key
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict (YAML/JSON-safe) form of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: ``*name`` could make a few hundred bytes stand for billions of values."""

    def compose_node(self, parent, index):  # PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML aliases (*{event.anchor}) are not accepted in config files; write the value out")
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one clear error for a missing, oversized, non-UTF-8 or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a config file (limit {MAX_CONFIG_BYTES})")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        data = {}
    require(isinstance(data, dict), f"{p}: the top level must be a mapping of keys to values")
    return data


MAX_CLASSES, MAX_PROTOTYPES = 10_000, 100_000


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model from its ``state_dict``; stored in every checkpoint.

    ``img_size`` is (H, W) of the model input; ``mean``/``std`` the per-channel input normalisation.
    """

    architecture: str = "protopnet"  # a registered architecture (protomdm.models.registry), checked when built
    backbone: str = "resnet18"
    class_names: tuple[str, ...] = ("class0", "class1")
    prototypes_per_class: int = 10
    prototype_dim: int = 128
    add_on: str = "bottleneck"  # ProtoPNet add-on layers: bottleneck | shallow
    # Similarity of a feature vector to a prototype. ProtoPNet: log (log((d + 1) / (d + epsilon)) of the squared L2
    # distance d, the original's) | linear (-d). XProtoNet: log (as published by Kim et al.) | cosine
    # ((1 + cos) / 2, the variant ProtoASNet uses).
    activation: str = "log"
    epsilon: float = 1e-4
    img_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    pretrained: bool = False
    multilabel: bool = False  # several classes per image (sigmoid outputs); set by training, always true for XProtoNet

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.img_size = tuple(self.img_size)  # type: ignore[assignment]
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        require(len(self.class_names) >= 1, "class_names must name at least one class")
        require(len(set(self.class_names)) == len(self.class_names), "class_names must be unique")
        # upper bounds far above any published model, so that a crafted config cannot ask for gigabytes
        require(len(self.class_names) <= MAX_CLASSES, f"at most {MAX_CLASSES} classes, got {len(self.class_names)}")
        require(1 <= self.prototypes_per_class <= 1000, "prototypes_per_class must be 1 .. 1000")
        require(1 <= self.prototype_dim <= 8192, "prototype_dim must be 1 .. 8192")
        require(len(self.class_names) * self.prototypes_per_class <= MAX_PROTOTYPES,
                f"at most {MAX_PROTOTYPES} prototypes in all, got {len(self.class_names) * self.prototypes_per_class}")
        require(self.add_on in ("bottleneck", "shallow"), f"add_on must be bottleneck or shallow, got {self.add_on!r}")
        require(len(self.img_size) == 2 and 8 <= min(self.img_size) and max(self.img_size) <= 4096,
                f"img_size must be [H, W] in 8 .. 4096, got {self.img_size}")
        require(self.in_channels in (1, 3), f"in_channels must be 1 or 3, got {self.in_channels}")
        require(len(self.mean) == self.in_channels and len(self.std) == self.in_channels,
               "mean and std need one value per input channel")
        require(all(s > 0 for s in self.std), "std values must be > 0")
        check_finite(self)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_prototypes(self) -> int:
        return self.num_classes * self.prototypes_per_class


LOSSES = ("normalised", "paper")


@dataclass
class MDMConfig:
    """Settings of the Multiple Dynamic Mask search (Peng et al.).

    Masks and optimiser are the paper's: 27 masks of 6..32 cells, init 0.5, Adam (lr 3e-3) over a ``steps``-step
    schedule (2000), gamma 5. The loss (``loss``):

    - ``normalised`` (default): ``||f(X) - f(MX)||^2 / ||f(X) - f(B)||^2 + lambda_l1 * mean|d|``. The reconstruction
      term is the share of the masking effect that the mask lets through, so one ``lambda_l1`` serves every model and
      activation scale. ``lambda_l1`` 3 was best on held-out images of three trained models (scripts/mdm_study.py:
      p90 Dice, Dice at the object's area and the pointing game); 0.003, the earlier default, kept a third of the
      image.
    - ``paper``: Algorithm 1 as written, ``lambda1 * ||f(X) - f(MX)||^2 + lambda2 * mean|d|`` (CUB: lambda1 1e-2, NIH
      1e-3; lambda2 1). For one image it is the normalised loss with ``lambda_l1 = lambda2 / (lambda1 * E)``, ``E``
      that image's ``||f(X) - f(B)||^2``: the weight of the area depends on how much masking moves the activation.

    The schedule is reached in fewer Adam steps: each mask takes at most ``adam_steps`` (400), every one standing for
    ``steps / adam_steps`` of the paper's (``time_scale``: the learning rate times that, the moment decay rates
    raised to that power, so the moments keep their time constants). On the schedule study (scripts/schedule_study.py:
    a trained ProtoPNet, XProtoNet and plain CNN at 64 and 224 px) the 400-step masks agree with the 2000-step ones as
    well as the earlier adaptive stop's (up to 1000 steps) did, in 2.5x fewer passes; 300 steps agree as well at 64 px
    but not at 224, and a time scale annealed over the run (large steps first, or last) agreed worse. Optionally
    (``tol``) every ``patience`` steps (from ``min_steps`` on) each task's masks are projected to the schedule's end
    by continuing every element's last Adam update, and once that projection's top-``stop_percentile`` mask has
    changed by at most ``tol`` (1 - Dice) over two checks in a row the task stops with its projection as result;
    ``extrapolate_after`` caps the steps the same way.
    ``time_scale: 1`` with ``tol: null`` and ``extrapolate_after: null`` is the paper's schedule, every step taken
    (``--full-schedule``).
    """

    sizes: tuple[int, ...] = tuple(range(6, 33))
    loss: str = "normalised"
    lambda_l1: float = 3.0  # chosen against ground truth (scripts/mdm_study.py; README "Choosing lambda")
    lambda1: float = 1e-3  # loss: paper only
    lambda2: float = 1.0  # loss: paper only
    gamma: float = 5.0
    lr: float = 3e-3
    steps: int = 2000
    init: float = 0.5
    baseline: str = "zero"  # what masked-out pixels become: zero | blur | mean (in the model's input space)
    blur_sigma: float = 10.0
    upsample: str = "bilinear"  # bilinear keeps an upsampled [0, 1] mask inside [0, 1]
    adam_steps: int | None = 400  # the Adam steps each mask takes: a longer schedule is covered by longer steps
    time_scale: float | None = None  # schedule steps per Adam step; None: steps / adam_steps (1 if steps are fewer)
    tol: float | None = None  # stop a task once its projected top mask changes by <= tol (1 - Dice) ...
    patience: int = 100  # ... between checks `patience` Adam steps apart, twice in a row
    min_steps: int = 200  # ... and not before this many Adam steps
    stop_percentile: float = 90.0
    batch_masks: int | None = None  # most masked images per forward pass; None: all at once
    precision: str = "fp32"
    channels_last: bool = False
    extrapolate_after: int | None = None  # the most Adam steps a task takes; the rest of the schedule is extrapolated

    def __post_init__(self) -> None:
        self.sizes = tuple(self.sizes)
        check_finite(self)
        require(len(self.sizes) >= 1 and all(a >= 1 for a in self.sizes), "sizes must be a non-empty list of positive ints")
        require(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        require(self.lambda_l1 >= 0, f"lambda_l1 must be >= 0, got {self.lambda_l1}")
        require(self.lambda1 > 0 and self.lambda2 >= 0, f"lambda1 must be > 0 and lambda2 >= 0, got {self.lambda1}, "
                f"{self.lambda2}")
        require(self.gamma >= 0, f"gamma must be >= 0, got {self.gamma}")
        require(self.gamma < len(self.sizes), f"gamma ({self.gamma}) must be below the number of masks ({len(self.sizes)})")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(0.0 <= self.init <= 1.0, f"init must lie in [0, 1], got {self.init}")
        require(self.baseline in BASELINES, f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        require(self.blur_sigma > 0, "blur_sigma must be > 0")
        require(self.upsample in ("bilinear", "nearest"), f"upsample must be bilinear or nearest, got {self.upsample!r}")
        require(self.time_scale is None or 1 <= self.time_scale <= self.steps,
                f"time_scale must lie in [1, steps] or be null, got {self.time_scale}")
        require(self.adam_steps is None or self.adam_steps >= 1, f"adam_steps must be null or >= 1, got {self.adam_steps}")
        require(self.tol is None or self.tol > 0, f"tol must be > 0 or null, got {self.tol}")
        require(self.patience >= 1 and self.min_steps >= 0, "patience must be >= 1 and min_steps >= 0")
        require(0 < self.stop_percentile < 100, "stop_percentile must lie strictly between 0 and 100")
        require(self.batch_masks is None or self.batch_masks >= 1, "batch_masks must be >= 1 or null")
        require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        require(self.extrapolate_after is None or self.extrapolate_after >= 1,
               f"extrapolate_after must be null or >= 1, got {self.extrapolate_after}")

    @property
    def horizon(self) -> int:
        """Adam steps of the whole schedule: ``adam_steps`` (or ``steps``, if fewer); with ``time_scale`` given,
        ``steps / time_scale`` rounded up."""
        if self.time_scale is None:
            return self.steps if self.adam_steps is None else min(self.steps, self.adam_steps)
        return math.ceil(self.steps / self.time_scale)

    @property
    def step_scale(self) -> float:
        """Schedule steps per Adam step: ``time_scale``, or ``steps / horizon`` where it is not given."""
        return self.time_scale if self.time_scale is not None else self.steps / self.horizon

    @property
    def steps_taken(self) -> int:
        """The most Adam steps a task takes: the schedule's, or fewer when the rest is extrapolated."""
        return min(self.horizon, self.extrapolate_after or self.horizon)

    def full_schedule(self) -> "MDMConfig":
        """The same settings on the paper's schedule: every one of ``steps`` steps taken, no stop, no projection."""
        return dataclasses.replace(self, time_scale=1.0, tol=None, extrapolate_after=None)


def load_mdm_config(path: str | Path) -> MDMConfig:
    """Read an :class:`MDMConfig` from YAML (keys at top level, or under ``mdm:``)."""
    data = load_yaml(path)
    if set(data) == {"mdm"}:
        data = data["mdm"]
    return from_dict(MDMConfig, data, where=str(path))


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


@dataclass
class OptimConfig:
    """Learning rates per parameter group (ProtoPNet's joint stage), weight decay, step LR, stage lengths."""

    features_lr: float = 1e-4
    add_on_lr: float = 3e-3
    prototype_lr: float = 3e-3
    head_lr: float = 3e-3  # XProtoNet's occurrence module and feature projection
    last_layer_lr: float = 1e-4
    warm_lr: float = 3e-3  # add-on layers and prototypes during warm-up
    weight_decay: float = 1e-3
    lr_step_size: int = 5  # joint-stage StepLR
    lr_gamma: float = 0.1
    warm_epochs: int = 5
    joint_epochs: int = 10
    push_epochs: tuple[int, ...] = ()  # epochs (0-based) after which to push; () = after the last epoch
    last_layer_epochs: int = 5  # last-layer-only epochs after each push

    def __post_init__(self) -> None:
        self.push_epochs = tuple(self.push_epochs)
        check_finite(self)
        for name in ("features_lr", "add_on_lr", "prototype_lr", "head_lr", "last_layer_lr", "warm_lr"):
            require(getattr(self, name) > 0, f"optim.{name} must be > 0, got {getattr(self, name)}")
        require(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        require(self.lr_step_size >= 1 and 0 < self.lr_gamma <= 1, "optim.lr_step_size >= 1 and 0 < lr_gamma <= 1")
        require(self.warm_epochs >= 0 and self.joint_epochs >= 0 and self.last_layer_epochs >= 0,
               "optim epoch counts must be >= 0")
        require(self.warm_epochs + self.joint_epochs >= 1, "optim: train at least one warm or joint epoch")
        total = self.warm_epochs + self.joint_epochs
        require(all(0 <= e < total for e in self.push_epochs), f"optim.push_epochs must lie in 0..{total - 1}")


@dataclass
class LossConfig:
    """Loss coefficients. ProtoPNet: cross-entropy, cluster, separation, L1 (Chen et al.). XProtoNet: BCE, cluster,
    separation, occurrence sparsity and transformation consistency (Kim et al.)."""

    crs_ent: float = 1.0
    clst: float = 0.8
    sep: float = -0.08
    l1: float = 1e-4
    occurrence: float = 1e-3
    consistency: float = 0.1
    pos_weight: bool = True  # XProtoNet: weight each finding's positives by negatives / positives

    def __post_init__(self) -> None:
        check_finite(self)


@dataclass
class TrainConfig:
    """A whole training run: the model, its data, the optimiser and the losses (one YAML file)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    device: str = "auto"  # auto: a CUDA GPU if there is one, else the CPU
    # keep a small copy of each prototype's source image in the checkpoints (the gallery and case reports show it):
    # a copy of a training image, so burned-in annotations travel with the checkpoint; false: no copies
    thumbnails: bool = True


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a :class:`TrainConfig` YAML file."""
    return from_dict(TrainConfig, load_yaml(path), where=str(path))
