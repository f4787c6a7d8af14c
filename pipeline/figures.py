"""Matplotlib without a screen, and figures written atomically (shared by the phases' plots)."""

from __future__ import annotations

from pathlib import Path


def pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:  # noqa: ANN001
    """Save a figure under a temporary name, then rename: readers never see half a PNG."""
    from storage.manifest import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    pyplot().close(fig)
    return path
