"""The model a scoring run uses: found, checked, its threshold read; loaded once per worker process."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ScoreError
from pipeline.learn.pixels import model_kind
from pipeline.score.args import ScoreArgs
from storage.manifest import file_checksum


@dataclass(frozen=True)
class ModelInfo:
    """The model file to score with, its checksum, name, input size (pixels) and threshold."""

    path: str
    sha256: str
    name: str
    image_size: int
    threshold: float
    threshold_source: str
    pixels: str = "rgb"  # what the model takes: rgb, or flux in ``bands``
    bands: str = "grz"


_models: dict[str, Any] = {}
_model_lock = threading.Lock()
model_loads: Counter = Counter()  # per process: how often each model file was loaded (tests read it)


def loaded_model(info: ModelInfo) -> Any:
    """The Keras model of ``info``, loaded on first use in this process and kept (one model per
    worker: a new one replaces it)."""
    with _model_lock:
        if info.sha256 not in _models:
            from pipeline.learn.quiet_import import import_keras

            keras = import_keras()
            import pipeline.learn.model  # noqa: F401  (registers AsinhStretch, the flux models' first layer)

            _models.clear()
            _models[info.sha256] = (keras.saving.load_model(info.path, compile=False), threading.Lock())
            model_loads[info.sha256] += 1
        return _models[info.sha256]


def load_counts() -> dict[str, int]:
    """This process's model loads by checksum (run on workers with ``client.run``)."""
    return dict(model_loads)


def default_batch_size() -> int:
    """Images per prediction: 1024 where a GPU is visible (more work per launch), 256 on a CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    has_gpu = (visible is None or visible.strip() not in ("", "-1")) and Path("/dev/nvidia0").exists()
    return 1024 if has_gpu else 256


def model_file(args: ScoreArgs) -> Path:
    """The model file ``args.model`` names: a directory train wrote, its model.keras, or a name under
    WS/models/ (absolute); ScoreError when there is none."""
    given = Path(args.model).expanduser()
    candidates = [given, given / "model.keras", args.workspace.models / args.model / "model.keras"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ScoreError(
            f"no model at {args.model}: give the directory `agnsurvey train` wrote (e.g. "
            f"{args.workspace.models}/paper) or its model.keras; train one with `agnsurvey train`"
        )
    return path.absolute()


def resolve_model(args: ScoreArgs) -> ModelInfo:
    """The model file (see :func:`model_file`) and the threshold: ``args.threshold``, else the
    ``threshold.json`` evaluate stored beside the model."""
    path = model_file(args)
    sha = file_checksum(path)
    config = model_config(path)
    image_size = model_input_size(path, config)
    kind = dataclasses.astuple(model_kind(config))
    if args.threshold is not None:
        return ModelInfo(str(path), sha, path.parent.name, image_size, float(args.threshold), "--threshold",
                         *kind)  # fmt: skip
    stored = path.parent / "threshold.json"
    if not stored.is_file():
        raise ScoreError(
            f"{path.parent} has no threshold.json: run `agnsurvey evaluate --model {path.parent.name}` to choose it "
            "on the validation split, or give one with --threshold"
        )
    try:
        chosen = json.loads(stored.read_text())
        threshold = float(chosen["threshold"])
    except (ValueError, KeyError, TypeError):
        raise ScoreError(f"{stored} is damaged; re-run `agnsurvey evaluate`, or give --threshold") from None
    if not 0 < threshold < 1:  # the rule --threshold is held to (NaN fails it too)
        raise ScoreError(
            f"{stored} holds threshold {chosen['threshold']!r}, not a probability in (0, 1): the file is damaged; "
            "re-run `agnsurvey evaluate`, or give --threshold"
        )
    if chosen.get("model_checksum") not in (None, sha):
        raise ScoreError(
            f"{stored} was chosen for another version of {path.name} (the model was retrained since); re-run "
            "`agnsurvey evaluate`, or give --threshold"
        )
    source = f"{stored} ({chosen.get('policy', '?')}, chosen on {chosen.get('chosen_on', 'val')})"
    return ModelInfo(str(path), sha, path.parent.name, image_size, threshold, source, *kind)


def model_config(path: Path) -> dict:
    """The Keras config of a saved ``.keras`` model (no Keras import)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise ScoreError(f"{path} is not a Keras model file (damaged?); re-run `agnsurvey train`") from None


def model_input_size(path: Path, config: dict) -> int:
    """Image size (pixels) the model of ``config`` (saved at ``path``) takes."""
    shapes = list(_find(config, "batch_shape"))
    if not shapes or len(shapes[0]) != 4:
        raise ScoreError(f"{path}: its input is not an image batch (batch, size, size, 3); not a model of train's")
    return int(shapes[0][1])


def _find(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        if key in node:
            yield node[key]
        for value in node.values():
            yield from _find(value, key)
    elif isinstance(node, list):
        for value in node:
            yield from _find(value, key)
