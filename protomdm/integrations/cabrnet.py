"""CaBRNet (aiser-team/cabrnet: ProtoPNet, ProtoTree, ProtoPool, PIP-Net) and protomdm, both ways.

- **CaBRNet models in protomdm**: :class:`CaBRNetAdapter` wraps a CaBRNet model (its ``similarities(x) -> (B, P, h,
  w)`` and ``prototype_class_mapping``) as a protomdm prototype network, so every localizer, ``evaluate``, the case
  reports and ``protomdm localize --ckpt MODEL_DIR`` work on it without conversion. :func:`load_cabrnet` reads a
  CaBRNet model directory (``model_arch.yml`` + ``model_state.pth``, as ``cabrnet train`` and ``cabrnet import``
  write them; ``dataset.yml`` for the input size and normalisation when present), its weights with
  ``weights_only=True`` and no backbone download.
- **protomdm's localizers in CaBRNet**: :func:`attribution_function` makes any registered localizer a CaBRNet
  attribution function ``f(model, img, img_tensor, proto_idx, device, location=None, **params) -> np.ndarray`` (the
  map at the raw image's size, as CaBRNet's own); :func:`register_attributions` lists them in CaBRNet's visualizer
  as ``protomdm_<method>`` (``protomdm_mdm``, ``protomdm_rise``...), so that a visualisation config names one::

      from protomdm.integrations.cabrnet import register_attributions
      register_attributions()          # once, before SimilarityVisualizer.build_from_config

      attribution:
        type: protomdm_mdm
        params: {steps: 400}

The ProtoPNet similarity map is exposed the same way by CaBRNet's other architectures; their class mapping may not
be one class per prototype (ProtoTree's leaves), which only the class names and case reports read.
Needs CaBRNet (``pip install 'protomdm[cabrnet]'``); its import path only, when its full dependency set is too heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError, UserError
from ..explain import PrototypeSelector, create_localizer, list_localizers
from ..explain.localization import unit_scale
from ..geometry import resize_heatmap
from ..models.base import Index, PrototypeModel
from ..models.checkpoint import register_checkpoint_reader
from .protopnet import WrappedModel

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ARCH_FILE, STATE_FILE, DATASET_FILE = "model_arch.yml", "model_state.pth", "dataset.yml"


def import_cabrnet() -> Any:
    """CaBRNet's top-level model class, or a one-line error naming what to install."""
    try:
        from cabrnet.archs.generic.model import CaBRNet
    except ImportError as e:
        raise UserError(f"CaBRNet models need the cabrnet package (missing: {e.name}): "
                        "pip install 'protomdm[cabrnet]'") from None
    return CaBRNet


class CaBRNetAdapter(WrappedModel):
    """A CaBRNet model as a protomdm prototype network (the wrapped model is used as is).

    Args:
        model: a CaBRNet model (``similarities``, ``prototype_class_mapping``, ``num_prototypes``).
        class_names: names for the classes (default ``"0"``, ``"1"``, ...).
        img_size, mean, std: the input the model expects (default 224 and ImageNet's normalisation).
    """

    wrapped: Any  # a CaBRNet model: similarities(x) -> (B, P, h, w), prototype_class_mapping (P, C)

    def __init__(self, model: nn.Module, class_names: Sequence[str] | None = None,
                 img_size: int | tuple[int, int] = 224, mean: Sequence[float] = IMAGENET[0],
                 std: Sequence[float] = IMAGENET[1]) -> None:
        mapping = torch.as_tensor(np.asarray(model.prototype_class_mapping), dtype=torch.float32)
        n_protos, n_classes = mapping.shape
        names = tuple(class_names) if class_names else tuple(str(c) for c in range(n_classes))
        if len(names) != n_classes:
            raise UserError(f"{len(names)} class names given for a model with {n_classes} classes")
        size = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        protos = getattr(getattr(model, "classifier", None), "prototypes", None)
        dim = int(protos.shape[1]) if isinstance(protos, torch.Tensor) and protos.dim() >= 2 else 1
        super().__init__(ModelConfig(
            architecture="protopnet", backbone=f"cabrnet:{type(model).__name__}", class_names=names,
            prototypes_per_class=max(1, n_protos // n_classes), prototype_dim=dim, img_size=size,
            in_channels=len(mean), mean=tuple(mean), std=tuple(std)))
        self.prototype_class_identity = mapping.to(self.prototype_class_identity.device)
        self.wrapped, self._num_prototypes = model, n_protos

    @property
    def num_prototypes(self) -> int:
        return self._num_prototypes

    def prototype_similarity_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        return self.wrapped.similarities(x)[:, self._index(idx)]

    def prototype_scores(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        return self.prototype_similarity_maps(x, idx).amax((2, 3))

    def localization_maps(self, x: torch.Tensor, idx: Index = None) -> torch.Tensor:
        return self.prototype_similarity_maps(x, idx)

    def class_connections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's ``last_layer`` weights ``(C, P)`` and bias."""
        return self.linear_connections(getattr(getattr(self.wrapped, "classifier", None), "last_layer", None))


def is_cabrnet_dir(path: str | Path) -> bool:
    """Whether ``path`` is a CaBRNet model directory (``model_arch.yml`` and ``model_state.pth``)."""
    p = Path(path)
    return p.is_dir() and (p / ARCH_FILE).is_file() and (p / STATE_FILE).is_file()


def _input_settings(dataset_file: Path) -> dict[str, Any]:
    """Input size and normalisation from a CaBRNet ``dataset.yml``'s test (else any) set transforms."""
    found: dict[str, Any] = {}
    cfg = yaml.safe_load(dataset_file.read_text()) if dataset_file.is_file() else {}
    sets = [cfg.get("test_set")] + [v for k, v in (cfg or {}).items() if k != "test_set"]
    for entry in sets:
        transforms = ((entry or {}).get("params") or {}).get("transform") or {}
        for t in transforms.values() if isinstance(transforms, dict) else ():
            kind, params = t.get("type"), t.get("params") or {}
            if kind == "Normalize" and "mean" not in found:
                found.update(mean=tuple(params["mean"]), std=tuple(params["std"]))
            elif kind in ("Resize", "CenterCrop", "RandomCrop", "RandomResizedCrop") and "img_size" not in found \
                    and (size := params.get("size")) is not None:
                found["img_size"] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return found


def load_cabrnet(path: str | Path, device: str | torch.device = "cpu", class_names: Sequence[str] | None = None,
                 **inputs) -> CaBRNetAdapter:
    """A CaBRNet model directory as a protomdm prototype network, in eval mode on ``device``.

    The architecture is built from ``model_arch.yml`` with a randomly initialised backbone (never downloaded), then
    ``model_state.pth`` is loaded with ``torch.load(..., weights_only=True)``. ``inputs`` (``img_size``, ``mean``,
    ``std``) override what ``dataset.yml`` says (default 224 and ImageNet's normalisation).
    """
    p = Path(path)
    if not is_cabrnet_dir(p):
        raise CheckpointError(f"{p}: not a CaBRNet model directory ({ARCH_FILE} and {STATE_FILE})")
    CaBRNet = import_cabrnet()
    config = yaml.safe_load((p / ARCH_FILE).read_text())
    backbone = (config.get("extractor") or {}).get("backbone") or {}
    backbone["weights"] = "None"  # the trained weights come from the state file: nothing to download
    try:
        model = CaBRNet.build_from_config(config)
        state = torch.load(p / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, AssertionError) as e:
        raise CheckpointError(f"{p}: not a loadable CaBRNet model: {str(e).splitlines()[0][:200]}") from None
    settings = {**_input_settings(p / DATASET_FILE), **inputs}
    return CaBRNetAdapter(model, class_names, **settings).to(device).eval()


def attribution_function(method: str = "mdm") -> Callable[..., np.ndarray]:
    """Registered localizer ``method`` as a CaBRNet attribution function.

    The function explains prototype ``proto_idx`` of ``model`` (a CaBRNet model or a protomdm prototype network) in
    ``img_tensor`` and returns its heatmap at ``img``'s size (``normalize``: scaled to [0, 1] after the resize).
    ``location`` is CaBRNet's choice of one latent location; protomdm's methods explain the prototype's score,
    which is its most similar location's (``location="max"``), so other values are refused. The other ``params``
    are the method's settings."""

    def attribution(model: nn.Module, img: Any, img_tensor: torch.Tensor, proto_idx: int,
                    device: str | torch.device = "cpu", location: Any = None, normalize: bool = True,
                    **params) -> np.ndarray:
        if location not in (None, "max"):
            raise UserError(f"protomdm's {method} explains a prototype's score (location 'max'), not {location!r}")
        x = img_tensor[None] if img_tensor.dim() == 3 else img_tensor
        size = (int(x.shape[-2]), int(x.shape[-1]))
        net = model if isinstance(model, PrototypeModel) else CaBRNetAdapter(model, img_size=size)
        net = net.to(device).eval()
        loc = create_localizer(method, **params).localize(x.to(device), PrototypeSelector(net, int(proto_idx)))
        height, width = (img.height, img.width) if hasattr(img, "height") else x.shape[-2:]
        heat = resize_heatmap(loc.heatmap, (int(height), int(width)), mode="bicubic")  # as CaBRNet's maps
        return unit_scale(heat) if normalize else heat

    attribution.__name__ = f"protomdm_{method}"
    attribution.__doc__ = f"protomdm's {method} as a CaBRNet attribution function."
    return attribution


def register_attributions() -> list[str]:
    """List every registered protomdm localizer in CaBRNet's visualizer as ``protomdm_<name>``; returns the names."""
    import_cabrnet()
    from cabrnet.core.visualization import visualizer

    names = []
    for method in list_localizers():
        name = f"protomdm_{method}"
        visualizer.SUPPORTED_ATTRIBUTION_FUNCTIONS[name] = attribution_function(method)
        names.append(name)
    return names


register_checkpoint_reader("cabrnet", is_cabrnet_dir, load_cabrnet)  # load_model reads model directories too
