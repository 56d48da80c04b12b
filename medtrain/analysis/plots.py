"""Agreement plots of predicted against true values: a scatter with the identity line, and a
Bland-Altman plot (difference against mean, with bias and 95% limits of agreement)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from medtrain.analysis.agreement import bland_altman
from medtrain.io import atomic_write


def save_figure(path: Path, figure) -> None:
    """Render to memory, then write atomically (an interrupted run never leaves half a PNG)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")


def save_agreement_plots(
    run_dir: str | Path, target: np.ndarray, pred: np.ndarray, name: str, suffix: str = ""
) -> list[Path]:
    """Write `scatter<suffix>.png` and `bland_altman<suffix>.png` into `run_dir`.

    Args:
        target: true values (N,).
        pred: predicted values (N,), same units.
        name: what the values are (axis labels).
        suffix: file-name suffix when a run predicts several values.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    target, pred = np.asarray(target, dtype=float), np.asarray(pred, dtype=float)
    paths = [run_dir / f"scatter{suffix}.png", run_dir / f"bland_altman{suffix}.png"]

    figure, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(target, pred, s=10, alpha=0.6)
    low = float(min(target.min(), pred.min())) if target.size else 0.0
    high = float(max(target.max(), pred.max())) if target.size else 1.0
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="identity")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(f"{name}: predicted against true (n={target.size})")
    ax.legend(loc="upper left")
    save_figure(paths[0], figure)

    figure, ax = plt.subplots(figsize=(5.5, 4.0))
    mean, difference = (pred + target) / 2, pred - target
    ax.scatter(mean, difference, s=10, alpha=0.6)
    limits = bland_altman(difference)
    for key, style in (("mean_difference", "-"), ("lower_limit", "--"), ("upper_limit", "--")):
        if limits[key] is not None:
            ax.axhline(limits[key], color="tab:red", linestyle=style, linewidth=1)
            ax.annotate(
                f"{key.replace('_', ' ')} {limits[key]:.3g}",
                (1.0, limits[key]),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=8,
            )
    ax.set_xlabel(f"mean of predicted and true {name}")
    ax.set_ylabel(f"predicted - true {name}")
    ax.set_title("Bland-Altman")
    save_figure(paths[1], figure)
    return paths
