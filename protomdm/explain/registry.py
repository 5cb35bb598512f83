"""One place for the localizers: each registers itself under its name, as timm's ``register_model`` does.

The CLI's ``--method``/``--methods``, :func:`protomdm.localize_prototype`, ``explain``, ``evaluate`` and ``bench``
all read this registry, so a new localizer is one module with one decorator::

    @register_localizer("mine")
    class MyLocalizer(Localizer):
        method = "mine"
        def compute_maps(self, x, selector, pairs): ...  # -> Maps((P, H, W))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import from_dict, load_yaml
from ..errors import UserError
from ..registry import Registry
from .localization import Localizer


@dataclass(frozen=True)
class LocalizerEntry:
    """A registered localizer: ``factory(settings, progress=...)`` when it has a ``settings`` dataclass (its
    defaults are the method's), else ``factory(**settings)``; ``needs_prototypes``: it reads the network's own
    prototype maps, so it cannot explain a plain classifier's logit."""

    name: str
    factory: Callable[..., Localizer]
    settings: type | None = None
    needs_prototypes: bool = False


_LOCALIZERS: Registry[LocalizerEntry] = Registry("method")


def register_localizer(name: str, settings: type | None = None, *, needs_prototypes: bool = False):
    """Decorator: register a localizer class (or a factory returning one) under ``name``."""

    def deco(factory):
        _LOCALIZERS.add(name, LocalizerEntry(name, factory, settings, needs_prototypes), same=lambda e: e.factory)
        return factory

    return deco


def list_localizers(for_logits: bool = False) -> list[str]:
    """The registered names, in registration order; ``for_logits``: only those that explain any classifier."""
    return [n for n in _LOCALIZERS if not (for_logits and _LOCALIZERS[n].needs_prototypes)]


def localizer_entry(name: str) -> LocalizerEntry:
    """The entry of ``name``; an unknown name is a :class:`UserError` listing the registered ones."""
    return _LOCALIZERS[name]


MethodConfigs = Mapping[str, Any]  # each method's settings by name: an instance of its settings class, a dict, a YAML


def method_settings(name: str, value: Any = None) -> Any:
    """Method ``name``'s settings as an instance of its registered settings class: ``value`` itself, or read from a
    mapping or a YAML file (keys at the top level, or under the method's name), or the defaults when None. A
    method without a settings class has None (and takes no ``value``)."""
    entry = localizer_entry(name)
    if entry.settings is None:
        if value not in (None, {}):
            raise UserError(f"method {name!r} has no settings to configure")
        return None
    if isinstance(value, entry.settings):
        return value
    where = f"{name} settings"
    if isinstance(value, (str, Path)):
        where, value = str(value), load_yaml(value)
        if isinstance(value, dict) and set(value) == {name}:
            value = value[name]
    return from_dict(entry.settings, value or {}, where=where)


def with_mdm(configs: MethodConfigs | None, mdm: Any = None) -> dict[str, Any]:
    """``configs`` as a dict, with ``mdm`` (the older keyword for MDM's settings) as its ``"mdm"`` entry if given."""
    return {**(configs or {}), **({"mdm": mdm} if mdm is not None else {})}


def settings_record(name: str, configs: MethodConfigs | None) -> dict[str, Any] | None:
    """What a run records of method ``name``'s settings (``run.json``): its effective settings as a dict, or None
    for a method without settings."""
    cfg = method_settings(name, (configs or {}).get(name))
    return None if cfg is None else dataclasses.asdict(cfg)


def create_localizer(name: str, config: Any = None, *, progress: bool = False, **settings) -> Localizer:
    """A localizer by name. ``config``: its settings (see :func:`method_settings`; else the defaults; another
    method's settings are ignored), with ``settings`` overriding single fields; a method without a settings
    dataclass takes ``settings`` as keywords."""
    entry = localizer_entry(name)
    if entry.settings is None:
        return entry.factory(**settings)
    fields = {f.name for f in dataclasses.fields(entry.settings)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise UserError(f"unknown {name.upper()} setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    base: Any = method_settings(name, config if isinstance(config, (entry.settings, dict, str, Path)) else None)
    return entry.factory(dataclasses.replace(base, **settings), progress=progress)
