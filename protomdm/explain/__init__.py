"""Selectors (what is explained) and localizers (where its evidence lies)."""

# Imported in the order the methods are listed (registration order): MDM, the networks' own search, Grad-CAM.
from .mdm import MDMLocalizer  # noqa: I001
from .upsample import UpsampleLocalizer
from .cam import CAMLocalizer
from .localization import Localization, Localizer
from .registry import create_localizer, list_localizers, register_localizer
from .selectors import LogitSelector, PrototypeSelector, Selector

__all__ = ["CAMLocalizer", "Localization", "Localizer", "LogitSelector", "MDMLocalizer", "PrototypeSelector", "Selector",
           "UpsampleLocalizer", "create_localizer", "list_localizers", "register_localizer"]
