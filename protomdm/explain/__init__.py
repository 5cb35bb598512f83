"""Selectors (what is explained) and localizers (where its evidence lies)."""

from .localization import Localization
from .mdm import MDMLocalizer
from .selectors import LogitSelector, PrototypeSelector, Selector
from .upsample import UpsampleLocalizer

__all__ = ["Localization", "LogitSelector", "MDMLocalizer", "PrototypeSelector", "Selector", "UpsampleLocalizer"]
