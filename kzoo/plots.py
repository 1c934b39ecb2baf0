"""Plots written into a run dir."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (runs write PNGs; no display is assumed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png: Path, title: str) -> None:
    """Title, lay out, write and close `fig`: the end of every kzoo plot."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    pyplot().close(fig)


def plot_curves(steps_jsonl: Path, png: Path, title: str) -> None:
    """Loss and metrics against training steps: running training values, validation at epoch ends."""
    import pandas as pd

    if not Path(steps_jsonl).is_file():
        return
    steps = pd.read_json(steps_jsonl, lines=True)
    panels = [c for c in steps.columns if c != "step" and not c.startswith("val_") and c != "learning_rate"]
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
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
    save_figure(fig, png, f"{title}: training curves")


def plot_reliability(curves: dict, png: Path, title: str, bins: int = 10) -> None:
    """Reliability diagram: mean label against mean score per bin, one line per entry of
    `curves` ({label: (y, p)}, e.g. "raw" and "isotonic"), equal-width bins on the left and
    equal-mass bins on the right (CTR scores crowd near 0, where equal-width bins see little);
    the diagonal is perfect calibration, and each legend entry carries its ECE."""
    from kzoo.metrics import calibration_curve_points, ece

    fig, axes = pyplot().subplots(1, 2, figsize=(9, 4.2))
    for ax, strategy in zip(axes, ("uniform", "quantile")):
        top = 0.0
        for label, (y, p) in curves.items():
            mean_pred, mean_true, _ = calibration_curve_points(y, p, bins, strategy)
            ax.plot(mean_pred, mean_true, "o-", markersize=4,
                    label=f"{label} (ECE {ece(y, p, bins, strategy):.4f})")
            top = max(top, float(mean_pred.max()), float(mean_true.max()))
        top = min(1.0, top * 1.05 + 1e-3)
        ax.plot([0, top], [0, top], ":", color="gray", label="perfectly calibrated")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("mean score in bin")
        ax.set_ylabel("fraction of positives in bin")
        ax.set_title(f"{bins} {'equal-width' if strategy == 'uniform' else 'equal-mass'} bins")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, png, f"{title}: reliability")
