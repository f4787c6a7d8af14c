"""Which pixels a model takes and a cube holds (``rgb``, or ``flux`` in some bands), and the one
check that they match: a model never sees pixels of another kind (no silent conversion).

Read from the saved model's ``config.json`` (no Keras import) and from the cube's attributes.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DataError


@dataclass(frozen=True)
class PixelKind:
    """``rgb`` (uint8 g,r,z colour) or ``flux`` (float32 nanomaggies) in ``bands``."""

    pixels: str = "rgb"
    bands: str = "grz"

    def describe(self) -> str:
        return "rgb pixels (uint8 g,r,z colour)" if self.pixels == "rgb" else f"flux pixels in bands {self.bands}"

    def fetch_flags(self) -> str:
        return "--pixels rgb" if self.pixels == "rgb" else f"--pixels flux --bands {self.bands}"


def cube_kind(cube: Any) -> PixelKind:
    """What a :class:`storage.cube.Cube` holds."""
    return PixelKind(cube.pixels, cube.bands)


def model_kind(config: dict) -> PixelKind:
    """What a model takes, from its Keras config: a flux model has an ``AsinhStretch`` layer."""
    for layer in _layers(config):
        if isinstance(layer, dict) and str(layer.get("class_name", "")).endswith("AsinhStretch"):
            return PixelKind("flux", str(layer.get("config", {}).get("bands", "")))
    return PixelKind()


def model_file_kind(path: Path) -> PixelKind:
    """What the saved ``.keras`` model at ``path`` takes (DataError when it is not a Keras file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return model_kind(json.loads(archive.read("config.json")))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise DataError(f"{path} is not a Keras model file (damaged?); re-run `agnsurvey train`") from None


def check_kind(model: PixelKind, model_path: Path | str, cube: PixelKind, cube_path: Path | str) -> None:
    """DataError, one line naming both, when the model takes other pixels than the cube holds."""
    if model == cube:
        return
    raise DataError(
        f"{model_path} was trained on {model.describe()}, but {cube_path} holds {cube.describe()}; fetch a cube "
        f"with {model.fetch_flags()} (--restart, or another --workspace), or train a model on this cube"
    )


def _layers(node: Any) -> list:
    """Every layer config nested in a Keras model config."""
    found = []
    if isinstance(node, dict):
        if "class_name" in node and "config" in node:
            found.append(node)
        for value in node.values():
            found.extend(_layers(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_layers(value))
    return found
