"""Figures as files: BPT 2-D histograms (the paper's Figures 2-4) with the dividing lines drawn.

Histogram counts are computed per partition (:func:`bpt_hist_counts`, pure numpy) and summed, so
the figure of a 10-million-row catalog costs one small array per shard, never the rows themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import bpt

X_RANGE = (-2.0, 1.0)  # log10([NII]/Hα)
Y_RANGE = (-1.5, 1.5)  # log10([OIII]/Hβ)
BINS = 150
PANELS = {"all": "All labelled galaxies", "sf": "Star-forming (label 0)", "agn": "AGN (label 1)"}


def bpt_hist_counts(x: np.ndarray, y: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    """2-D counts on a fixed grid ([x bin, y bin], upper edges open) for all rows, label 0 and label 1.

    Equivalent to ``np.histogram2d`` with ``BINS`` bins over ``X_RANGE`` × ``Y_RANGE`` except that
    a point exactly on the upper edge of the range falls outside; ~10x faster (no binary search).
    Also counts every row, inside the axes or not (``n_all``, ``n_sf``, ``n_agn``).
    """
    ix = np.floor((np.asarray(x, dtype=np.float64) - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0]) * BINS)
    iy = np.floor((np.asarray(y, dtype=np.float64) - Y_RANGE[0]) / (Y_RANGE[1] - Y_RANGE[0]) * BINS)
    inside = (ix >= 0) & (ix < BINS) & (iy >= 0) & (iy < BINS)
    flat = (ix * BINS + iy)[inside].astype(np.intp)
    counts = {}
    for key, selected in {"all": np.ones(len(label), dtype=bool), "sf": label == 0, "agn": label == 1}.items():
        grid = np.bincount(flat[selected[inside]], minlength=BINS * BINS).reshape(BINS, BINS)
        counts[key] = grid.astype(np.int64)
        counts[f"n_{key}"] = np.array(int(selected.sum()))
    return counts


def sum_counts(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Element-wise sum of per-partition histogram dicts (grids and totals)."""
    return {key: np.sum([p[key] for p in parts], axis=0) for key in parts[0]}


def bpt_histograms(counts: dict[str, np.ndarray], out_dir: Path, scheme: str) -> list[Path]:
    """Write ``bpt_all.png``, ``bpt_sf.png``, ``bpt_agn.png`` (log colour scale) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title in PANELS.items():
        grid = counts[key]
        fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
        if grid.sum() > 0:
            image = ax.imshow(
                np.where(grid > 0, grid, np.nan).T,
                origin="lower",
                extent=(*X_RANGE, *Y_RANGE),
                aspect="auto",
                norm=LogNorm(vmin=1, vmax=max(grid.max(), 1)),
                cmap="viridis",
            )
            fig.colorbar(image, ax=ax, label="galaxies per bin")
        _draw_lines(ax, scheme)
        ax.set(
            xlim=X_RANGE,
            ylim=Y_RANGE,
            xlabel=r"log$_{10}$([NII] 6584 / H$\alpha$)",
            ylabel=r"log$_{10}$([OIII] 5007 / H$\beta$)",
            title=f"{title}: {int(counts[f'n_{key}']):,} ({int(counts[f'n_{key}'] - grid.sum()):,} off the axes)",
        )
        ax.legend(loc="lower left", fontsize=8)
        path = out_dir / f"bpt_{key}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _draw_lines(ax, scheme: str) -> None:
    xk = np.linspace(X_RANGE[0], bpt.KAUFFMANN_ASYMPTOTE - 0.01, 300)
    xw = np.linspace(X_RANGE[0], bpt.KEWLEY_ASYMPTOTE - 0.01, 300)
    ax.plot(xk, bpt.kauffmann2003(xk), "k-", lw=1.5, label="Kauffmann 2003")
    ax.plot(xw, bpt.kewley2001(xw), "r--", lw=1.5, label="Kewley 2001")
    if scheme == "paper":
        ax.axvline(bpt.PAPER_X_LIMIT, color="k", ls=":", lw=1.2, label="x = -0.1 (paper)")


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:  # noqa: ANN001
    """Save a figure under a temporary name, then rename: readers never see half a PNG."""
    from storage.manifest import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], marks: dict[str, tuple[float, float]],
             path: Path) -> Path:  # fmt: skip
    """ROC curves (false vs true positive rate, AGN positive) per split, with the chosen thresholds."""
    plt = _pyplot()
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    for name, (precision, recall, ap) in curves.items():
        ax.plot(recall, precision, lw=1.6, label=f"{name} (AP {ap:.3f})")
    ax.axhline(base_rate, color="0.6", ls=":", lw=1, label=f"AGN fraction {base_rate:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (AGN)", ylabel="precision (AGN)", title="Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def confusion_plot(matrix: list[list[int]], threshold: float, path: Path) -> Path:
    """The 2x2 confusion matrix (rows: truth SF, AGN; columns: predicted) with counts and row fractions."""
    plt = _pyplot()
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
    plt = _pyplot()
    columns = max((len(v) for v in panels.values()), default=1) or 1
    fig, axes = plt.subplots(len(panels), columns, figsize=(1.9 * columns, 2.2 * len(panels)), dpi=110, squeeze=False)
    for r, (title, cells) in enumerate(panels.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(cells):
                image, p, label, objid = cells[c]
                ax.imshow(image)
                ax.set_title(f"p={p:.2f} {'AGN' if label == 1 else 'SF'}\n{objid}", fontsize=7)
        axes[r][0].text(-0.08, 0.5, title, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=8)  # fmt: skip
    return save_figure(fig, path)
