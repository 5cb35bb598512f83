"""protomdm: where does a prototype network look?

ProtoPNet and XProtoNet models, activation selectors, and the Multiple Dynamic Mask (MDM) localizer beside the
networks' own upsampling search.
"""

from .config import ModelConfig
from .errors import UserError
from .explain import Localization, LogitSelector, MDMLocalizer, PrototypeSelector, UpsampleLocalizer
from .explain.case import CaseReport, explain_case
from .explain.mdm import MDMConfig
from .jobs.localize import localize_prototype
from .models import ProtoPNet, XProtoNet, build_model, load_model, save_checkpoint
from .version import __version__

__all__ = ["__version__", "CaseReport", "Localization", "LogitSelector", "MDMConfig", "MDMLocalizer", "ModelConfig", "ProtoPNet",
           "PrototypeSelector", "UpsampleLocalizer", "UserError", "XProtoNet", "build_model", "explain_case", "load_model",
           "localize_prototype", "save_checkpoint"]
