"""Plain torchvision classifiers (CNNs and Transformers) and ``protomdm explain``: MDM on a class logit beside the
Grad-CAM family, in one figure like the MDM paper's Figure 9."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.images import InputSpec, read_image, to_model_input
from ..errors import CheckpointError, UserError
from ..explain import LogitSelector, create_localizer, list_localizers
from ..explain.localization import model_device
from ..explain.registry import MethodConfigs, with_mdm


def classifier_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refuses pickled objects (never runs code), any way
        raise CheckpointError(f"{path}: not a state_dict this loader can open safely ({str(e).splitlines()[0][:120]})"
                              ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict (parameter name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def build_classifier(arch: str, ckpt: str | Path | None = None, pretrained: bool = False,
                     img_size: int = 224) -> nn.Module:
    """A torchvision classifier by name, in eval mode: random weights (``weights=None``), ImageNet weights
    (``pretrained``; torchvision downloads them once) or a state_dict file (``ckpt``, loaded with
    ``weights_only=True``; its number of classes is read from it). ViTs are built for ``img_size``."""
    import torchvision

    names = classifier_names()
    if arch not in names:
        raise UserError(f"unknown `arch` {arch!r}; torchvision classifiers include "
                        f"{', '.join(n for n in names if n in ('resnet50', 'vgg19', 'densenet121', 'vit_b_16', 'swin_b'))}"
                        f" and {len(names) - 5} more")
    if pretrained and ckpt:
        raise UserError("give `ckpt` or `pretrained`, not both")
    kw = {"image_size": img_size} if arch.startswith("vit_") and not pretrained else {}
    if pretrained:
        return torchvision.models.get_model(arch, weights="DEFAULT").eval()
    if ckpt is None:
        return torchvision.models.get_model(arch, weights=None, **kw).eval()
    sd = _state_dict(Path(ckpt))
    model = torchvision.models.get_model(arch, weights=None, **kw)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    head_key = next(k for k, v in model.named_parameters() if v is head.weight)
    if head_key in sd and sd[head_key].shape[0] != head.out_features:
        model = torchvision.models.get_model(arch, weights=None, num_classes=int(sd[head_key].shape[0]), **kw)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt}: weights do not fit {arch}: {str(e).strip().splitlines()[-1].strip()[:200]}"
                              ) from None
    return model.eval()


def explain_classifier(model: nn.Module, image_path: str | Path, out_dir: str | Path, *, class_index: int | None = None,
                       methods: Sequence[str] = ("mdm", "gradcam", "gradcampp", "scorecam"), img_size: int = 224,
                       method_configs: MethodConfigs | None = None, title: str = "", overwrite: bool = False,
                       progress: bool = False, mdm: Any = None) -> dict:
    """Explain one class logit of ``model`` in one image with each method; writes ``{stem}_explain.png`` (the
    image and one heatmap per method) and ``{stem}_explain.json``. Returns the JSON record. ``method_configs``: the
    methods' settings by name (``mdm=`` is the older name of its ``"mdm"`` entry)."""
    from ..files import check_writable, write_json
    from ..geometry import resize_heatmap
    from ..report.figures import save_panels
    from ..report.names import output_stem

    known = list_localizers(for_logits=True)
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise UserError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    configs = with_mdm(method_configs, mdm)
    localizers = {m: create_localizer(m, configs.get(m), progress=progress) for m in methods}
    image = read_image(image_path)
    stem = output_stem(image)
    out = check_writable(out_dir, [f"{stem}_explain.png", f"{stem}_explain.json"], overwrite)
    x = to_model_input(image, InputSpec(img_size=(img_size, img_size))).to(model_device(model))
    with torch.no_grad():
        logits = model(x)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    k = int(logits[0].argmax()) if class_index is None else class_index
    selector = LogitSelector(model, k, num_classes=int(logits.shape[1]))
    rgb = image.pixels if image.pixels.ndim == 3 else np.repeat(image.pixels[..., None], 3, -1)
    panels, record = [("image", rgb, None)], {"class_index": k, "logit": float(logits[0, k]), "methods": {}}
    for method, localizer in localizers.items():
        loc = localizer.localize(x, selector)
        panels.append((f"{method} ({loc.seconds:.1f}s)", resize_heatmap(loc.heatmap, image.size), "jet"))
        record["methods"][method] = {**loc.summary(), "box_input_p90": loc.box(90)}
    save_panels(out / f"{stem}_explain.png", [panels], title or f"class {k}")
    write_json(out / f"{stem}_explain.json", record)
    return {**record, "files": [str(out / f"{stem}_explain.png"), str(out / f"{stem}_explain.json")]}
