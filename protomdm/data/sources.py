"""One interface for every dataset: a *source* gives the training and test sets, the evaluation's ground truth, and
a check of the user's copy. Each dataset is one module that registers its source under its name::

    @dataclass
    class MineOptions:  # the dataset's own settings, written beside the shared ones in data:
        table: str = "labels.csv"

    @register_dataset("mine", options=MineOptions)
    class MySource(DatasetSource):
        def training(self, model): ...
        def evaluation(self, model, options, shard): ...

and ``protomdm train``, ``protomdm evaluate --dataset mine`` and ``protomdm check-data --dataset mine`` find it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from torch.utils.data import Dataset

from ..config import ModelConfig
from ..errors import UserError
from ..registry import Registry
from .config import DataConfig, register_options
from .groundtruth import EvalSample, Shard, Skipped
from .manifests import Check


@dataclass(frozen=True)
class EvalOptions:
    """What an evaluation asks of a source: at most ``limit`` images; ``seed`` picks synthetic ones; CUB's
    ground truth (``truth``, ``part_half_width``); ``multilabel`` synthetic data."""

    limit: int | None = None
    seed: int = 1
    truth: str = "segmentation"
    part_half_width: int = 16
    multilabel: bool = False


class DatasetSource(abc.ABC):
    """A dataset, configured by ``data`` (its ``root`` and options). ``per_finding``: images carry several
    findings, so evaluation tables are also given per finding."""

    per_finding: bool = False

    def __init__(self, data: DataConfig) -> None:
        self.data = data

    @abc.abstractmethod
    def training(self, model: ModelConfig) -> tuple[Dataset, Dataset, bool]:
        """``(train, test, multilabel)``: datasets of ``(image (C, H, W) in [0, 1], target, mask)`` at the model's
        input size; the target is a class index (single-label) or a float multi-hot vector."""

    @abc.abstractmethod
    def evaluation(self, model: ModelConfig, options: EvalOptions, shard: Shard = (0, 1)
                   ) -> Iterable[EvalSample | Skipped]:
        """The images with ground truth (boxes, masks) of the model's classes, at its input size."""

    def root(self) -> Path:
        """``data.root``, which must be a folder."""
        root = Path(self.data.root or "")
        if not self.data.root or not root.is_dir():
            raise UserError(f"dataset folder not found: {self.data.root or '(none given)'} is not a folder (the root of the "
                            f"{self.data.dataset} dataset's copy)")
        return root

    def check(self) -> list[Check]:
        """What the copy at ``data.root`` holds, item by item."""
        return [Check(self.data.dataset, "ok", "nothing to check: the data is generated")]


_DATASETS: Registry[Callable[[DataConfig], DatasetSource]] = Registry("dataset")


def register_dataset(name: str, options: type | None = None):
    """Decorator: register a :class:`DatasetSource` subclass under ``name``, with the dataclass of its own options
    (read flat from the config's ``data:`` section beside the shared settings; see
    :class:`~protomdm.data.config.DataConfig`)."""
    register_options(name, options)
    return _DATASETS.register(name)


def list_datasets() -> list[str]:
    """The registered dataset names, in registration order."""
    return _DATASETS.names()


def dataset_source(data: DataConfig) -> DatasetSource:
    """The source of ``data.dataset``; an unknown name is a UserError listing the registered ones."""
    return _DATASETS[data.dataset](data)
