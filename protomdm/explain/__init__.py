"""Selectors (what is explained) and localizers (where its evidence lies)."""

from .cam import CAMLocalizer
from .localization import Localization
from .mdm import MDMLocalizer
from .selectors import LogitSelector, PrototypeSelector, Selector
from .upsample import UpsampleLocalizer

__all__ = ["CAMLocalizer", "Localization", "LogitSelector", "MDMLocalizer", "PrototypeSelector", "Selector", "UpsampleLocalizer"]
