"""A model directory (``WS/models/NAME/``): its files, its training state (and one line per finished
epoch of its history, :func:`epoch_line`), and loading the models it holds."""

from __future__ import annotations

import json
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


def load_model(path: Path) -> Any:
    """A checkpoint or model, or a clear error when it is missing or damaged."""
    import keras

    import pipeline.learn.model  # noqa: F401  (registers AsinhStretch, the flux models' first layer)

    try:
        return keras.saving.load_model(path)
    except (ValueError, OSError) as exc:
        raise TrainingError(f"{path} cannot be loaded ({str(exc).splitlines()[0][:120]}); pass --restart to train "
                            "anew") from None  # fmt: skip


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float) -> str:
    """``epoch 3/10  loss 0.5123  ...  (12.3 s)``: one finished epoch."""
    parts = [f"epoch {epoch}/{epochs}"]
    for key in ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"):
        if key in logs:
            parts.append(f"{key} {float(logs[key]):.4f}")
    rate = logs.get("images_per_second")
    return "  ".join(parts) + f"  ({seconds:.1f} s" + (f", {rate:,.0f} train img/s)" if rate else ")")
