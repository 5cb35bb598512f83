"""Prototype networks, their backbones, the architecture registry and the checkpoint format."""

from .backbones import BACKBONES, build_backbone
from .base import PrototypeModel
from .checkpoint import build_model, load_model, load_model_and_extra, read_checkpoint, save_checkpoint
from .protopnet import ProtoPNet
from .registry import architecture_class, create_model, list_architectures, register_architecture
from .xprotonet import XProtoNet

__all__ = ["BACKBONES", "PrototypeModel", "ProtoPNet", "XProtoNet", "architecture_class", "build_backbone",
           "build_model", "create_model", "list_architectures", "load_model", "load_model_and_extra",
           "read_checkpoint", "register_architecture", "save_checkpoint"]
