"""Convolutional feature extractors: torchvision ResNet/VGG/DenseNet, MONAI DenseNet-121, and a tiny CNN for tests.

:func:`build_backbone` returns ``(features, channels)`` where ``features(x: (B, C, H, W)) -> (B, channels, h, w)``.
Weights are never downloaded unless ``pretrained=True`` is asked for explicitly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, UserError

TORCHVISION_BACKBONES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "densenet121", "densenet161", "densenet169", "densenet201",
)
BACKBONES = TORCHVISION_BACKBONES + ("monai_densenet121", "tiny", "tiny_gn")


class TinyCNN(nn.Sequential):
    """Four 3x3 conv blocks, stride 8 overall: a CPU-friendly backbone for the synthetic data and tests.

    ``norm="group"`` (backbone ``tiny_gn``) uses GroupNorm, whose result does not depend on the batch: multi-process
    CPU training then equals one process exactly (SyncBatchNorm, which keeps BatchNorm exact, needs GPUs).
    """

    def __init__(self, in_channels: int = 3, width: int = 32, norm: str = "batch") -> None:
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i < 3 else 1, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]) if norm == "batch" else nn.GroupNorm(8, chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)
        self.out_channels = chans[-1]


def _first_conv_to(module: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d so it takes ``in_channels`` (grey inputs); pretrained RGB weights are summed."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            if child.in_channels == in_channels:
                return
            new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                            bias=child.bias is not None)
            with torch.no_grad():
                new.weight.copy_(child.weight.sum(1, keepdim=True).expand_as(new.weight) / in_channels)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            setattr(module, name, new)
            return
        if any(True for _ in child.modules() if isinstance(_, nn.Conv2d)):
            _first_conv_to(child, in_channels)
            return


def build_backbone(name: str, pretrained: bool = False, in_channels: int = 3) -> tuple[nn.Module, int]:
    """Build the feature part of a classifier.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: load the publisher's ImageNet weights (torchvision's ``DEFAULT``; downloads once, then cached).
        in_channels: 3 for RGB, 1 for grey inputs.

    Returns:
        ``(features, channels)``: a module mapping ``(B, in_channels, H, W)`` to ``(B, channels, h, w)``.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if name in ("tiny", "tiny_gn"):
        if pretrained:
            raise ConfigError(f"the {name!r} backbone has no pretrained weights")
        net = TinyCNN(in_channels, norm="group" if name == "tiny_gn" else "batch")
        return net, net.out_channels
    if name == "monai_densenet121":
        try:
            from monai.networks.nets import DenseNet121
        except ImportError:
            raise ConfigError("backbone monai_densenet121 needs MONAI: pip install 'protomdm[monai]'") from None
        if pretrained:
            raise ConfigError("monai_densenet121 has no built-in pretrained weights; load them into the checkpoint")
        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
        return nn.Sequential(net.features, nn.ReLU()), 1024

    model = _torchvision_model(name, pretrained)
    if name.startswith("resnet"):
        features = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                                 model.layer1, model.layer2, model.layer3, model.layer4)
        channels = model.fc.in_features
    elif name.startswith("vgg"):
        features = model.features
        channels = 512
    else:  # densenet: torchvision's features end at norm5, the classifier applies the ReLU
        features = nn.Sequential(model.features, nn.ReLU())
        channels = model.classifier.in_features
    if in_channels != 3:
        _first_conv_to(features, in_channels)
    return features, channels


def _torchvision_model(name: str, pretrained: bool) -> nn.Module:
    """torchvision's ``name``, with its ``DEFAULT`` ImageNet weights if ``pretrained``; weights that are neither
    cached nor downloadable (no network) are a UserError naming the file and the folder torchvision reads."""
    import torchvision.models as tvm

    if not pretrained:
        return getattr(tvm, name)(weights=None)
    weights = tvm.get_model_weights(name).DEFAULT
    try:
        return getattr(tvm, name)(weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a truncated download a RuntimeError
        import torch.hub

        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(f"the pretrained {name} weights are not on this machine and could not be downloaded "
                        f"({type(e).__name__}); copy {weights.url.rsplit('/', 1)[-1]} (from {weights.url}) into "
                        f"{folder} (set TORCH_HOME to use another folder), or leave out --pretrained") from None
