"""Typed configs: small dataclasses that round-trip through plain dicts and YAML, and the model's config.

Every config validates itself in ``__post_init__`` and :func:`from_dict` rejects unknown keys, so a typo in a YAML
file is one clear :class:`~protomdm.errors.ConfigError` before any work starts. Each domain keeps its own config
beside its code: the method settings beside each localizer (``MDMConfig`` in :mod:`protomdm.explain.mdm`), the data
source's in :mod:`protomdm.data.config`, the losses' in :mod:`protomdm.models.losses`, a training run's in
:mod:`protomdm.training.config`. :class:`ModelConfig` stays here: the data sources and the models both read it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")

BASELINES = ("zero", "blur", "mean")  # what masked-out pixels become (protomdm.explain.perturbation)


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
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types. A class with its own
    ``from_mapping(data, where)`` (a config whose keys depend on a value, as a dataset's options) builds itself."""
    require(isinstance(data, dict), f"{where}: expected a mapping, got {type(data).__name__}")
    if hasattr(cls, "from_mapping"):
        return cls.from_mapping(data, where)  # type: ignore[attr-defined]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    require(not unknown, f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(sorted(names))}")
    kwargs = typed_values(cls, data, where)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required key
        raise ConfigError(f"{where}: {e}") from None


def typed_values(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data``'s values checked and converted to the types of ``cls``'s fields of the same names."""
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict (YAML/JSON-safe) form of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if hasattr(v, "to_mapping"):  # a config that flattens itself (the counterpart of from_mapping)
            return plain(v.to_mapping())
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
