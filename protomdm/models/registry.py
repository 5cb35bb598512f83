"""One place for the prototype-network architectures: each registers itself under its name, as timm's
``register_model`` does.

Checkpoints, ``protomdm train``/``init-model``/``localize --model`` and :func:`create_model` read this registry,
so a new architecture is one module with one decorator::

    @register_architecture("mine")
    class MyNet(PrototypeModel):
        activations = ("log",)
        def prototype_similarity_maps(self, x, idx=None): ...
        # ... and what it owns: parameter_groups, training_loss, push_candidates, class_connections
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..config import ModelConfig, from_dict
from ..errors import ConfigError
from ..registry import Registry
from .base import PrototypeModel

M = TypeVar("M", bound=type[PrototypeModel])
_ARCHITECTURES: Registry[type[PrototypeModel]] = Registry("architecture", ConfigError)


def register_architecture(name: str) -> Callable[[M], M]:
    """Decorator: register a :class:`PrototypeModel` subclass as architecture ``name`` (its config's
    ``architecture``)."""
    return lambda cls: _ARCHITECTURES.add(name, cls)  # type: ignore[return-value]


def list_architectures() -> list[str]:
    """The registered names, in registration order."""
    return _ARCHITECTURES.names()


def architecture_class(name: str) -> type[PrototypeModel]:
    """The class registered as ``name``; an unknown name is a :class:`ConfigError` listing the registered ones."""
    return _ARCHITECTURES[name]


def check_model_config(config: ModelConfig) -> type[PrototypeModel]:
    """The architecture class of ``config``, after checking that it is registered and takes its ``activation``."""
    cls = architecture_class(config.architecture)
    if config.activation not in cls.activations:
        raise ConfigError(f"activation of a {config.architecture} must be one of {cls.activations}, "
                          f"got {config.activation!r}")
    return cls


def create_model(config: ModelConfig | dict[str, Any]) -> PrototypeModel:
    """Instantiate the architecture named in ``config`` (random or pretrained-backbone weights)."""
    if isinstance(config, dict):
        config = from_dict(ModelConfig, config, where="model config")
    return check_model_config(config)(config)
