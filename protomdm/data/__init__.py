"""Reading images and datasets. Importing the package registers every dataset source (in this order), so that
:func:`protomdm.data.sources.dataset_source` finds them by name."""

from . import synthetic, nih, cub, table, chexlocalize  # noqa: F401, I001 - registration order: the names list in this order
from .sources import DatasetSource, EvalOptions, dataset_source, list_datasets, register_dataset

__all__ = ["DatasetSource", "EvalOptions", "dataset_source", "list_datasets", "register_dataset"]
