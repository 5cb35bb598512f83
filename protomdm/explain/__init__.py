"""Selectors (what is explained) and localizers (where its evidence lies)."""

# Imported in the order the methods are listed (registration order): MDM, the networks' own search, the other
# perturbation methods (RISE, extremal perturbation), the Grad-CAM family, the attribution methods (saliency,
# SmoothGrad, PRP).
from .mdm import MDMLocalizer  # noqa: I001
from .upsample import UpsampleLocalizer
from .rise import RISELocalizer
from .extremal import ExtremalLocalizer
from .cam import CAMLocalizer
from .attribution import SaliencyLocalizer, SmoothGradLocalizer
from .prp import PRPLocalizer
from .localization import Localization, Localizer, Maps
from .perturbation import Perturbation
from .registry import create_localizer, list_localizers, register_localizer
from .selectors import LogitSelector, PrototypeSelector, Selector

__all__ = ["CAMLocalizer", "ExtremalLocalizer", "Localization", "Localizer", "LogitSelector", "MDMLocalizer", "Maps",
           "PRPLocalizer", "Perturbation", "PrototypeSelector", "RISELocalizer", "SaliencyLocalizer", "Selector",
           "SmoothGradLocalizer", "UpsampleLocalizer", "create_localizer", "list_localizers", "register_localizer"]
