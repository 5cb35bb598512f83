"""The evaluation's figures: the mask metrics against the percentile (the MDM paper's Figure 5) and the mean
deletion/insertion curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write
from . import metrics as M


def plot_metrics(path: str | Path, summary: pd.DataFrame) -> Path:
    """One panel per mask metric: its mean over all findings against the percentile, one line per method (and
    Dice's ceiling, dashed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.2), dpi=100)
    axes = fig.subplots(1, len(M.MASK_METRICS))
    rows = summary[(summary["finding"] == "all") & summary["percentile"].notna()]
    for ax, metric in zip(axes, M.MASK_METRICS):
        for m, g in rows[rows["metric"] == metric].groupby("method"):
            g = g.sort_values("percentile")
            ax.plot(g["percentile"], g["value"], marker="o", label=m)
        ceiling = rows[rows["metric"] == f"{metric}_ceiling"].groupby("percentile")["value"].first()
        if not ceiling.empty:  # the best a mask of that size can reach against these objects
            ax.plot(ceiling.index, ceiling.to_numpy(), "k--", lw=1, label="ceiling")
        ax.set_title(metric)
        ax.set_xlabel("percentile p (top 100-p% kept)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_curves(path: str | Path, curves: pd.DataFrame) -> Path:
    """The mean deletion and insertion curves (score / unmasked score) of each method, with their AUC."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=100)
    axes = dict(zip(("deletion", "insertion"), fig.subplots(1, 2)))
    for (m, kind), g in curves.groupby(["method", "curve"]):
        mean = np.mean(np.stack(g["values"].to_list()), 0)
        axes[kind].plot(np.linspace(0, 1, len(mean)), mean, label=f"{m} (AUC {M.curve_auc(mean):.3f})")
    for kind, ax in axes.items():
        ax.set_title(f"{kind} (score / unmasked score)")
        ax.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "restored"))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
