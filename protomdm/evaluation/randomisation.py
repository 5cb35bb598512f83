"""Model parameter randomisation (Adebayo et al., "Sanity checks for saliency maps", 2018): an explanation that
stays the same when the network's weights are replaced by random ones does not explain the network.

The layers are re-initialised one after another from the top (cascading, ``top_down``), each copy of the model
explained again, and each explanation compared with the original one by Spearman's rank correlation per image; a
faithful method's correlation falls towards 0. The randomisation is Quantus's (``MPRT``): every module that has
``reset_parameters``, in ``named_modules`` order (reversed for ``top_down``), the generator seeded with ``seed + 1``
before each reset; ``independent`` restores the other layers first.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

ORDERS = ("top_down", "bottom_up", "independent")


def randomised_models(model: nn.Module, order: str = "top_down", seed: int = 42) -> Iterator[tuple[str, nn.Module]]:
    """``(layer name, model copy)`` with one more layer (``independent``: only that layer) re-initialised."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    original = copy.deepcopy(model.state_dict())
    rand = copy.deepcopy(model)
    modules = [(n, m) for n, m in rand.named_modules() if hasattr(m, "reset_parameters")]
    for name, module in modules[::-1] if order == "top_down" else modules:
        if order == "independent":
            rand.load_state_dict(original)
        torch.manual_seed(seed + 1)
        module.reset_parameters()
        yield name, rand


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two explanations (flattened); NaN when either is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def parameter_randomisation(model: nn.Module, explain: Callable[[nn.Module], np.ndarray], order: str = "top_down",
                            seed: int = 42) -> dict[str, np.ndarray]:
    """Per randomised layer, the rank correlation ``(N,)`` of each image's explanation with the original model's.

    Args:
        explain: ``model -> (N, H, W)`` explanations of fixed images and targets by that model.
    """
    reference = explain(model)
    return {name: np.array([rank_correlation(r, e) for r, e in zip(reference, explain(rand))])
            for name, rand in randomised_models(model, order, seed)}
