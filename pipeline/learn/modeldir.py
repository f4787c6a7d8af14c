"""A model directory (``WS/models/NAME/``): its files, its training state (and one line per finished
epoch of its history, :func:`epoch_line`), and loading the models it holds."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from pipeline.errors import TrainingError
from pipeline.learn.args import TrainArgs

TRAINED_ON = "train_objid.npy"  # ids of the galaxies a model trained on


def model_dir(args: TrainArgs) -> Path:
    return args.workspace.models / str(args.name)


def read_state(directory: Path) -> dict[str, Any]:
    """``{"epochs_done": k, "checkpoint": path or None, "history": [...]}`` of a model directory."""
    path = directory / "state.json"
    if not path.exists():
        return {"epochs_done": 0, "checkpoint": None, "history": []}
    state = read_json(path)
    if not isinstance(state, dict) or not {"epochs_done", "checkpoint", "history"} <= set(state):
        raise TrainingError(f"{path} is not a training state; pass --restart to train anew")
    return state


def read_json(path: Path) -> Any:
    """A model directory's JSON file, or a clear error when it is damaged."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainingError(f"{path} is missing; train the model again (`agnsurvey train --restart`)") from None
    except ValueError:
        raise TrainingError(f"{path} is damaged (not JSON); pass --restart to train anew") from None


def whole_model(path: Path) -> bool:
    """``path`` is a whole .keras file: a zip archive whose members all read back (one cut short by a
    kill or a full disk is not)."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def load_model(path: Path, fix: str = "pass --restart to train anew") -> Any:
    """A checkpoint or model, or a clear error when it is missing or damaged (``fix``: what to do then)."""
    import keras

    import pipeline.learn.model  # noqa: F401  (registers AsinhStretch, the flux models' first layer)

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path} is missing; {fix}")
    if not zipfile.is_zipfile(path):
        raise TrainingError(f"{path} is damaged: not a whole .keras file (truncated or overwritten?); {fix}")
    try:
        return keras.saving.load_model(path)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise TrainingError(f"{path} is damaged: Keras cannot load it ({cause}); {fix}") from None


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float) -> str:
    """``epoch 3/10  loss 0.5123  ...  (12.3 s)``: one finished epoch."""
    parts = [f"epoch {epoch}/{epochs}"]
    for key in ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"):
        if key in logs:
            parts.append(f"{key} {float(logs[key]):.4f}")
    rate = logs.get("images_per_second")
    return "  ".join(parts) + f"  ({seconds:.1f} s" + (f", {rate:,.0f} train img/s)" if rate else ")")
