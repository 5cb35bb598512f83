"""Training: losses, prototype push, and the staged trainer."""

from .push import push_prototypes
from .trainer import TrainResult, train

__all__ = ["TrainResult", "push_prototypes", "train"]
