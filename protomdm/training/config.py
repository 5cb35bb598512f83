"""A whole training run's settings: the model, its data, the optimiser and the losses (one YAML file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig, check_finite, from_dict, load_yaml, require
from ..data.config import DataConfig
from ..models.losses import LossConfig


@dataclass
class OptimConfig:
    """Learning rates per parameter group (ProtoPNet's joint stage), weight decay, step LR, stage lengths."""

    features_lr: float = 1e-4
    add_on_lr: float = 3e-3
    prototype_lr: float = 3e-3
    head_lr: float = 3e-3  # XProtoNet's occurrence module and feature projection
    last_layer_lr: float = 1e-4
    warm_lr: float = 3e-3  # add-on layers and prototypes during warm-up
    weight_decay: float = 1e-3
    lr_step_size: int = 5  # joint-stage StepLR
    lr_gamma: float = 0.1
    warm_epochs: int = 5
    joint_epochs: int = 10
    push_epochs: tuple[int, ...] = ()  # epochs (0-based) after which to push; () = after the last epoch
    last_layer_epochs: int = 5  # last-layer-only epochs after each push

    def __post_init__(self) -> None:
        self.push_epochs = tuple(self.push_epochs)
        check_finite(self)
        for name in ("features_lr", "add_on_lr", "prototype_lr", "head_lr", "last_layer_lr", "warm_lr"):
            require(getattr(self, name) > 0, f"optim.{name} must be > 0, got {getattr(self, name)}")
        require(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        require(self.lr_step_size >= 1 and 0 < self.lr_gamma <= 1, "optim.lr_step_size >= 1 and 0 < lr_gamma <= 1")
        require(self.warm_epochs >= 0 and self.joint_epochs >= 0 and self.last_layer_epochs >= 0,
               "optim epoch counts must be >= 0")
        require(self.warm_epochs + self.joint_epochs >= 1, "optim: train at least one warm or joint epoch")
        total = self.warm_epochs + self.joint_epochs
        require(all(0 <= e < total for e in self.push_epochs), f"optim.push_epochs must lie in 0..{total - 1}")


@dataclass
class TrainConfig:
    """A whole training run: the model, its data, the optimiser and the losses (one YAML file)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    device: str = "auto"  # auto: a CUDA GPU if there is one, else the CPU
    # keep a small copy of each prototype's source image in the checkpoints (the gallery and case reports show it):
    # a copy of a training image, so burned-in annotations travel with the checkpoint; false: no copies
    thumbnails: bool = True


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a :class:`TrainConfig` YAML file."""
    return from_dict(TrainConfig, load_yaml(path), where=str(path))
