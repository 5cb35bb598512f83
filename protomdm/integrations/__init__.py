"""Adapters that let protomdm's selectors and localizers work on models from other codebases, and other libraries
call protomdm's localizers (captum, quantus, monai, cabrnet: import those modules themselves)."""

from . import cabrnet  # noqa: F401  (registers CaBRNet model directories with load_model; imports no CaBRNet)
from .protopnet import ProtoPNetAdapter, as_prototype_model

__all__ = ["ProtoPNetAdapter", "as_prototype_model"]
