"""Prototype networks, their backbones and the checkpoint format."""

from .backbones import BACKBONES, build_backbone
from .base import PrototypeModel
from .checkpoint import build_model, load_model, load_model_and_extra, read_checkpoint, save_checkpoint
from .protopnet import ProtoPNet
from .xprotonet import XProtoNet

__all__ = ["BACKBONES", "PrototypeModel", "ProtoPNet", "XProtoNet", "build_backbone", "build_model", "load_model", "load_model_and_extra",
           "read_checkpoint", "save_checkpoint"]
