"""The evaluation report's figures as files: ROC and precision-recall curves, the confusion matrix,
and a gallery of test cutouts (the most confident and the worst mistakes each way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.figures import pyplot, save_figure


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], marks: dict[str, tuple[float, float]],
             path: Path) -> Path:  # fmt: skip
    """ROC curves (false vs true positive rate, AGN positive) per split, with the chosen thresholds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {auc:.3f})")
    for name, (x, y) in marks.items():
        ax.plot([x], [y], "o", ms=6, label=name)
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (SF called AGN)",
           ylabel="true positive rate (AGN recall)", title="ROC")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def pr_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], base_rate: float, path: Path) -> Path:
    """Precision-recall curves per split; the horizontal line is the AGN fraction (a random model)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    for name, (precision, recall, ap) in curves.items():
        ax.plot(recall, precision, lw=1.6, label=f"{name} (AP {ap:.3f})")
    ax.axhline(base_rate, color="0.6", ls=":", lw=1, label=f"AGN fraction {base_rate:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (AGN)", ylabel="precision (AGN)", title="Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def confusion_plot(matrix: list[list[int]], threshold: float, path: Path) -> Path:
    """The 2x2 confusion matrix (rows: truth SF, AGN; columns: predicted) with counts and row fractions."""
    plt = pyplot()
    grid = np.asarray(matrix, dtype=np.float64)
    fractions = grid / np.maximum(grid.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=120)
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{int(grid[i, j]):,}\n{fractions[i, j]:.1%}", ha="center", va="center",
                    color="white" if fractions[i, j] > 0.5 else "black")  # fmt: skip
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["SF", "AGN"], yticklabels=["SF", "AGN"],
           xlabel="predicted", ylabel="true (BPT)", title=f"Test split at threshold {threshold:.3f}")  # fmt: skip
    return save_figure(fig, path)


def gallery_plot(panels: dict[str, list[tuple[np.ndarray, float, int, int]]], path: Path) -> Path:
    """Rows of cutouts, one row per title: (image, P(AGN), true label, objid) each."""
    plt = pyplot()
    columns = max((len(v) for v in panels.values()), default=1) or 1
    fig, axes = plt.subplots(len(panels), columns, figsize=(1.9 * columns, 2.2 * len(panels)), dpi=110, squeeze=False)
    for r, (title, cells) in enumerate(panels.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(cells):
                image, p, label, objid = cells[c]
                ax.imshow(displayable(image))
                ax.set_title(f"p={p:.2f} {'AGN' if label == 1 else 'SF'}\n{objid}", fontsize=7)
        axes[r][0].text(-0.08, 0.5, title, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=8)  # fmt: skip
    return save_figure(fig, path)


def displayable(image: np.ndarray) -> np.ndarray:
    """An image imshow can draw: rgb bytes as they are; flux (S, S, B) through a per-image asinh
    scaled to [0, 1], as colour when it has 3 bands (z, r, g as R, G, B) and grey otherwise."""
    if image.dtype == np.uint8:
        return image
    x = np.arcsinh(np.nan_to_num(image.astype(np.float64)) / max(float(np.median(np.abs(image))), 1e-9))
    x = (x - x.min()) / max(float(np.ptp(x)), 1e-9)
    return x[..., ::-1] if x.shape[-1] == 3 else x.mean(axis=-1)

