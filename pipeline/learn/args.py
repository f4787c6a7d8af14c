"""The learning phase's arguments: ``[train]`` and ``[evaluate]``, validated when built (no Keras
import: configuration is checked before any framework loads)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from pipeline import validate
from pipeline.errors import ConfigError
from storage.workspace import Workspace

MODEL_NAMES: tuple[str, ...] = ("paper", "resnet18")  # pipeline.learn.model.MODELS, without importing Keras
Precision = Literal["float32", "mixed_bfloat16"]
Accelerator = Literal["auto", "gpu", "cpu"]
Composites = Literal["exclude", "agn"]
ClassWeight = Literal["none", "balanced"]
TrainOn = Literal["driver", "workers"]


@dataclass(frozen=True)
class TrainArgs:
    """Cube + labels → ``WS/models/NAME/``: Adam, binary cross-entropy, a checkpoint per epoch.

    ``model``: a registered architecture (``paper``, ``resnet18``); ``name``: the model directory
    (default: the model's name). ``lr``: Adam's learning rate. ``devices``: devices of this node to
    train on (default: every visible GPU, else one CPU); ``accelerator``: ``gpu`` requires GPUs
    (an error without them, never a CPU run), ``cpu`` splits the CPU into ``devices`` logical
    devices (for testing data-parallel code). ``composites``: leave them out (``exclude``) or count
    them as AGN. ``class_weight``: ``balanced`` weighs both classes equally. ``augment``: random
    flips and 90° rotations of training images. ``shuffle_buffer`` images (memory: 49 KB each at
    128 pixels) mix ``block_rows``-row blocks read in a random order each epoch; ``readers``
    threads read ahead; ``prefetch`` batches wait ready. ``seed`` fixes initial weights, data
    order and augmentation. ``keep_checkpoints``: the last this many epoch checkpoints are kept, and
    the one of the lowest validation loss; older ones are deleted. ``on``: where ``agnsurvey run``
    trains: ``driver`` (this process) or ``workers`` (one training process per Dask worker,
    gradients combined across them); None: ``workers`` when the cluster has more than one worker
    process and some are on other machines, else ``driver``. ``restart`` discards an existing model
    directory.
    """

    SECTION: ClassVar[str] = "train"  # its table in the TOML config

    workspace: Workspace
    model: str = "paper"
    name: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    precision: Precision = "float32"
    devices: int | None = None
    accelerator: Accelerator = "auto"
    composites: Composites = "exclude"
    class_weight: ClassWeight = "none"
    augment: bool = True
    shuffle_buffer: int = 4096
    block_rows: int = 64
    readers: int = 4
    prefetch: int = 8
    seed: int = 0
    keep_checkpoints: int = 3
    on: TrainOn | None = None
    restart: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", validate.workspace(self.workspace))
        validate.one_of("train.model", self.model, MODEL_NAMES)
        name = self.model if self.name is None else self.name  # "" is refused, not taken for the default
        object.__setattr__(self, "name", validate.model_name("train.name", name))
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise ConfigError(f"train.seed must be an integer in [0, 2**32) (got {self.seed!r})")
        for key in ("epochs", "batch_size", "shuffle_buffer", "block_rows", "readers", "prefetch", "keep_checkpoints"):
            validate.positive(f"train.{key}", getattr(self, key))
        validate.positive("train.devices", self.devices, optional=True)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and 0 < self.lr < 1):
            raise ConfigError(f"train.lr must be a learning rate in (0, 1) (got {self.lr!r}); Adam's default is 0.001")
        for key, allowed in (("precision", Precision), ("accelerator", Accelerator), ("composites", Composites),
                             ("class_weight", ClassWeight)):  # fmt: skip
            validate.one_of(f"train.{key}", getattr(self, key), get_args(allowed))
        if self.on is not None:
            validate.one_of("train.on", self.on, get_args(TrainOn))


@dataclass(frozen=True)
class EvaluateArgs:
    """A trained model + the val and test splits → threshold, metrics and plots in ``WS/reports/``.

    ``threshold_policy``: how the threshold is chosen on the *validation* split: ``balanced``
    (max balanced accuracy), ``youden`` (max TPR - FPR), ``f1`` (max F1), ``purity:P`` (lowest
    threshold whose AGN precision >= P), ``fixed:T``. ``tta``: average the 8 flips/rotations.
    ``compare``: other workspaces (or their ``reports/metrics.json``) whose last evaluation the report
    shows beside this one, e.g. the same galaxies fetched as flux.
    """

    SECTION: ClassVar[str] = "evaluate"  # its table in the TOML config

    workspace: Workspace
    model: str = "paper"
    threshold_policy: str = "balanced"
    tta: bool = False
    batch_size: int = 256
    compare: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", validate.workspace(self.workspace))
        object.__setattr__(self, "compare", tuple(str(p) for p in self.compare))
        validate.model_name("evaluate.model", self.model)
        validate.positive("evaluate.batch_size", self.batch_size)
        parse_policy(self.threshold_policy)


def parse_policy(text: str) -> tuple[str, float | None]:
    """``balanced`` → ("balanced", None); ``purity:0.8`` → ("purity", 0.8); errors name the fix."""
    kind, _, value = str(text).partition(":")
    if kind in ("balanced", "youden", "f1") and not value:
        return kind, None
    if kind in ("purity", "fixed"):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if 0 < number < 1 or (kind == "purity" and number == 1):
            return kind, number
    raise ConfigError(
        f"evaluate.threshold_policy {text!r}: give balanced, youden, f1, purity:P (P in (0, 1], e.g. purity:0.8) "
        "or fixed:T (T in (0, 1), e.g. fixed:0.3)"
    )
