"""The BPT diagram as files: 2-D histograms of all labelled, star-forming and AGN galaxies (the
paper's Figures 2-4), with the dividing lines drawn.

Histogram counts are computed per partition (:func:`bpt_hist_counts`, pure numpy) and summed, so
the figure of a 10-million-row catalog costs one small array per shard, never the rows themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.catalog import bpt

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
