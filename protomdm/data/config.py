"""Where the data come from: :class:`DataConfig`, read by every dataset source (:mod:`protomdm.data.sources`).

The settings every dataset shares (``dataset``, ``root``, ``seed``, loading) are :class:`DataConfig`'s fields; the
rest are the dataset's own options, a dataclass that its source registers beside itself
(``@register_dataset("mine", options=MineOptions)``): :class:`~protomdm.data.synthetic.SyntheticOptions`,
:class:`~protomdm.data.table.TableOptions`, :class:`~protomdm.data.chexlocalize.CheXlocalizeOptions`. In YAML and
in Python they are written flat beside the shared ones (``data: {dataset: table, root: ..., table: labels.csv}``,
``DataConfig(dataset="table", table="labels.csv")``, ``data.table``); an option of another dataset is refused with
the list of the chosen one's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import check_finite, from_dict, require, to_dict, typed_values
from ..errors import ConfigError

_OPTIONS: dict[str, type] = {}  # dataset name -> its options dataclass (filled by register_dataset)


@dataclass(frozen=True)
class NoOptions:
    """The options of a dataset that has none beyond the shared settings (NIH, CUB)."""


def register_options(dataset: str, options: type | None) -> None:
    """Record ``dataset``'s options dataclass (None: it has none); called by
    :func:`~protomdm.data.sources.register_dataset`."""
    _OPTIONS[dataset] = options or NoOptions


def options_class(dataset: str) -> type:
    """The options dataclass of a registered ``dataset`` (:class:`NoOptions` for one that has none or is unknown:
    an unknown name is refused where its source is looked up, with the registered names)."""
    return _OPTIONS.get(dataset, NoOptions)


@dataclass(init=False)
class DataConfig:
    """Where the training and evaluation data come from: a registered dataset (``synthetic`` needs no files;
    ``nih``, ``cub``, ``chexlocalize`` and ``table`` read ``root``; see :mod:`protomdm.data.sources`), the seed
    (synthetic data: the train set uses it, the test set ``seed + 1``; a table: its split's seed), random
    horizontal flips in training, the batch size and loader workers, and ``cache_dir`` (decoded images at the
    model's input size are cached there; default ``~/.cache/protomdm``; ``none``: no cache). ``options`` holds the
    dataset's own options, also readable as attributes (``data.table``); pass them as keywords."""

    dataset: str = "synthetic"
    root: str | None = None
    seed: int = 0
    flip: bool = True
    batch_size: int = 32
    num_workers: int = 0
    cache_dir: str | None = None
    options: Any = None  # an instance of the dataset's options class

    def __init__(self, options: Any = None, **values: Any) -> None:
        for f in dataclasses.fields(self):  # the shared settings, their defaults where not given
            if f.name != "options":
                setattr(self, f.name, values.pop(f.name, f.default))
        cls = options_class(self.dataset)
        given = to_dict(options) if dataclasses.is_dataclass(options) else dict(options or {})
        self.options = _build_options(cls, self.dataset, {**given, **values}, "data")
        self.__post_init__()

    def __post_init__(self) -> None:
        check_finite(self)
        require(bool(self.dataset), "data.dataset must name a dataset")
        require(not getattr(self.options, "needs_root", True) or bool(self.root),
                f"data.root is required for dataset {self.dataset}")
        require(self.batch_size >= 1 and self.num_workers >= 0, "data.batch_size must be >= 1, num_workers >= 0")

    def __getattr__(self, name: str) -> Any:
        """The dataset's own options read as attributes (``data.table``)."""
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"data has no setting {name!r}" + (f" for dataset {self.dataset}"
                                                               if "dataset" in self.__dict__ else ""))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "data") -> "DataConfig":
        """From a flat mapping (a config file's ``data:`` section): the shared keys, typed, and the dataset's
        options, typed and checked by its options class."""
        dataset = data.get("dataset", "synthetic")
        shared = typed_values(cls, {k: v for k, v in data.items() if k in SHARED}, where)
        options = _build_options(options_class(str(dataset)), str(dataset),
                                 {k: v for k, v in data.items() if k not in SHARED}, where)
        return cls(**shared, options=options)

    def to_mapping(self) -> dict[str, Any]:
        """The flat mapping that :meth:`from_mapping` reads back."""
        return {**{k: getattr(self, k) for k in SHARED}, **to_dict(self.options)}


def _build_options(cls: type, dataset: str, values: dict[str, Any], where: str) -> Any:
    """``cls`` from ``values``, an option it does not have refused with the dataset's own list."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        own = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"{where}: {', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'}"
                          f" of the {dataset} dataset (its options: {own}; every dataset's: {', '.join(SHARED)})")
    return from_dict(cls, values, where)


SHARED = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name != "options")  # every dataset's settings
