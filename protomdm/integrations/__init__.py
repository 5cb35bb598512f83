"""Adapters that let protomdm's selectors and localizers work on models from other codebases."""

from .protopnet import ProtoPNetAdapter, as_prototype_model

__all__ = ["ProtoPNetAdapter", "as_prototype_model"]
# protomdm.integrations.monai.MDM: import it from there (it needs no MONAI itself, but its users have it)
