"""protomdm's localizers as Quantus explanation functions: ``explain_func(model, inputs, targets, **kwargs)``.

Quantus's metrics call ``explain_func(model=model, inputs=x_batch, targets=y_batch, **explain_func_kwargs)`` and
expect attributions as a NumPy array; this one returns ``(B, 1, H, W)`` heatmaps in [0, 1]::

    import quantus
    from protomdm.integrations.quantus import explain_func
    quantus.PointingGame()(model, x, y, s_batch=masks, explain_func=explain_func,
                           explain_func_kwargs={"method": "mdm", "steps": 400})

``kind="prototype"`` reads ``targets`` as prototype indices of a protomdm prototype network (default: class logits
of any classifier). Any other keyword is a setting of the method (``steps=``, ``masks=``...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..explain import create_localizer
from ..explain.selectors import per_image_targets

QUANTUS_KEYS = ("device", "channel_first", "softmax")  # what Quantus may pass along besides the method's settings


def explain_func(model: nn.Module, inputs: np.ndarray | torch.Tensor, targets: Any, method: str = "mdm",
                 kind: str = "logit", **kwargs) -> np.ndarray:
    """Heatmaps ``(B, 1, H, W)`` (float32 in [0, 1]) of ``method`` for ``inputs: (B, C, H, W)``, image ``b``
    explaining ``targets[b]`` (a class, or a prototype with ``kind="prototype"``)."""
    settings = {k: v for k, v in kwargs.items() if k not in QUANTUS_KEYS}
    device = kwargs.get("device")
    x = torch.as_tensor(inputs if isinstance(inputs, torch.Tensor) else np.asarray(inputs)).float()
    if device is not None:
        model = model.to(device)  # the localizer brings the inputs to the model
    selector, pairs = per_image_targets(model, targets, len(x), kind)
    locs = create_localizer(method, **settings).localize(x, selector, pairs)
    return np.stack([loc.heatmap for loc in locs])[:, None].astype(np.float32)
