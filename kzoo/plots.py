"""Plots written into a run dir."""

from __future__ import annotations

from pathlib import Path


def plot_curves(steps_jsonl: Path, png: Path, title: str) -> None:
    """Loss and metrics against training steps: running training values, validation at epoch ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not Path(steps_jsonl).is_file():
        return
    steps = pd.read_json(steps_jsonl, lines=True)
    panels = [c for c in steps.columns if c != "step" and not c.startswith("val_") and c != "learning_rate"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    train = steps.dropna(subset=panels, how="all")
    val = steps[[c for c in steps.columns if c.startswith("val_")] + ["step"]].dropna()
    for ax, col in zip(axes[0], panels):
        ax.plot(train["step"], train[col], "-", label="train (running mean in epoch)")
        if f"val_{col}" in val:
            ax.plot(val["step"], val[f"val_{col}"], "s", markersize=7, label="validation (epoch end)")
        ax.set_title(col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: training curves")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
