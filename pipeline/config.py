"""One typed configuration: a TOML file plus command-line overrides, validated at load.

Every stage takes one frozen dataclass of arguments (``IngestArgs``, ``LabelArgs``, ...). The TOML
file has one table per stage with the same field names::

    workspace = "ws"

    [cluster]
    spec = "local"            # local | local:N | local-cuda | slurm | tcp://host:8786 | scheduler.json
    n_workers = 2
    [cluster.slurm]           # with spec = "slurm" (dask-jobqueue)
    queue = "gpu"
    account = "astro"
    cores = 8
    memory = "32GiB"
    jobs = 4

    [ingest]
    radius_column = "PETROTH90"
    max_rows = 500000          # rows per HEALPix partition of the HATS output
    [ingest.columns]          # canonical name = source column
    ha_flux = "h_alpha_flux"

    [label]
    scheme = "paper"          # paper | kewley2001 | three-class
    min_snr = 3.0
    split = [0.75, 0.15, 0.10]

    [fetch]
    cutout_url = "https://www.legacysurvey.org/viewer/cutout.jpg"
    layer = "ls-dr10"
    concurrency = 32
    rate = 20.0               # requests/s over all workers

Errors name the key (``label.min_snr``) and say how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pipeline.errors import ConfigError
from storage.workspace import Workspace, as_workspace

Scheme = Literal["paper", "kewley2001", "three-class"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
IdKind = Literal["auto", "int", "string"]
ID_KINDS: tuple[str, ...] = get_args(IdKind)
FetchRows = Literal["auto", "labelled", "all"]
FETCH_ROWS: tuple[str, ...] = get_args(FetchRows)
MODEL_NAMES: tuple[str, ...] = ("paper", "resnet18")  # pipeline.model.MODELS, without importing Keras
Precision = Literal["float32", "mixed_bfloat16"]
Accelerator = Literal["auto", "gpu", "cpu"]
Composites = Literal["exclude", "agn"]
ClassWeight = Literal["none", "balanced"]

CANONICAL_COLUMNS: tuple[str, ...] = (
    "objid", "ra", "dec", "z", "radius_arcsec",
    "ha_flux", "nii_flux", "hb_flux", "oiii_flux",
    "ha_flux_err", "nii_flux_err", "hb_flux_err", "oiii_flux_err",
)  # fmt: skip


@dataclass(frozen=True)
class ClusterConfig:
    """Where the Dask graphs run. ``spec``: local, local:N, local-cuda, slurm, tcp://host:port or a
    scheduler file; ``n_workers`` and ``threads_per_worker`` size a local cluster; ``slurm``: the
    ``[cluster.slurm]`` table (queue, account, walltime, cores, memory, processes, jobs, ...)."""

    spec: str = "local"
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    slurm: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("cluster.n_workers", self.n_workers, optional=True)
        _positive("cluster.threads_per_worker", self.threads_per_worker, optional=True)
        from cluster.client import ClusterSpecError, SlurmSettings

        try:
            object.__setattr__(self, "slurm", SlurmSettings.from_table(self.slurm))
        except (ClusterSpecError, TypeError) as exc:
            raise ConfigError(f"[cluster.slurm]: {exc}") from None


@dataclass(frozen=True)
class SkyArgs:
    """The offline NSA-like catalog: ``n`` galaxies from ``seed``, written to ``out``; ``layout``
    ``v0`` (NSA v0_1_2: FITS + Parquet with emission lines) or ``v1`` (NSA v1_0_1 names, no lines)."""

    out: Path
    n: int = 20_000
    seed: int = 0
    partition_rows: int = 250_000
    layout: Literal["v0", "v1"] = "v0"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        _positive("sky.n", self.n)
        _positive("sky.partition_rows", self.partition_rows)
        if self.seed < 0:
            raise ConfigError(f"sky.seed must be >= 0 (got {self.seed})")
        if self.layout not in ("v0", "v1"):
            raise ConfigError(f"sky.layout must be v0 (NSA v0_1_2) or v1 (NSA v1_0_1) (got {self.layout!r})")


@dataclass(frozen=True)
class IngestArgs:
    """Catalog files → ``WS/catalog/``, a HATS catalog in the canonical schema, in sky order.

    ``columns`` maps canonical names to source columns (overrides the NSA defaults);
    ``radius_column`` is the radius in arcsec used for the cutout scale (PETROTH90: three radii
    then frame the whole galaxy); ``max_rows`` is the most rows of one HEALPix partition (fewer
    when needed to give every worker thread two partitions);
    ``chunk_rows`` the rows one read task takes from a FITS or Parquet input; ``hdu`` the FITS
    extension holding the table (None: the first table); ``id_kind``: ``string`` keeps ids as
    text (``source_id``, hashed into ``objid``), ``int`` requires exact integers, ``auto`` goes by
    the column's type.
    """

    workspace: Workspace
    inputs: tuple[str, ...]
    columns: Mapping[str, str] = field(default_factory=dict)
    radius_column: str = "PETROTH90"
    max_rows: int = 500_000
    chunk_rows: int = 500_000
    format: Literal["auto", "fits", "parquet", "csv"] = "auto"
    hdu: int | None = None
    id_kind: IdKind = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", _workspace(self.workspace))
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        object.__setattr__(self, "columns", dict(self.columns))
        if not self.inputs:
            raise ConfigError("ingest needs at least one catalog file (agnsurvey ingest CATALOG ...)")
        _positive("ingest.max_rows", self.max_rows)
        _positive("ingest.chunk_rows", self.chunk_rows)
        for key in self.columns:
            if key not in CANONICAL_COLUMNS:
                raise ConfigError(
                    f"ingest.columns: unknown canonical column {key!r}; "
                    f"use one of {', '.join(CANONICAL_COLUMNS)} (e.g. --column ha_flux=h_alpha_flux)"
                )
        if self.format not in ("auto", "fits", "parquet", "csv"):
            raise ConfigError(f"ingest.format must be auto, fits, parquet or csv (got {self.format!r})")
        if self.hdu is not None and (not isinstance(self.hdu, int) or isinstance(self.hdu, bool) or self.hdu < 0):
            raise ConfigError(f"ingest.hdu must be an HDU number >= 0 (got {self.hdu!r}); the NSA table is in HDU 1")
        if self.id_kind not in ID_KINDS:
            raise ConfigError(f"ingest.id_kind must be one of {', '.join(ID_KINDS)} (got {self.id_kind!r})")


@dataclass(frozen=True)
class LabelArgs:
    """Ingested catalog → ``WS/labels/``: BPT ratios, class, label, split and cube index.

    ``min_snr``: every one of the four lines needs flux/err >= min_snr (None: no S/N cut).
    ``split``: train / val / test fractions, assigned by a hash of ``objid``.
    """

    workspace: Workspace
    scheme: Scheme = "paper"
    min_snr: float | None = None
    split: tuple[float, float, float] = (0.75, 0.15, 0.10)
    plots: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", _workspace(self.workspace))
        object.__setattr__(self, "split", tuple(float(s) for s in self.split))
        if self.scheme not in SCHEMES:
            raise ConfigError(f"label.scheme must be one of {', '.join(SCHEMES)} (got {self.scheme!r})")
        if self.min_snr is not None and not (math.isfinite(self.min_snr) and self.min_snr > 0):
            raise ConfigError(f"label.min_snr must be > 0 (got {self.min_snr}); omit it for no S/N cut")
        if len(self.split) != 3 or any(s < 0 for s in self.split) or not math.isclose(sum(self.split), 1.0):
            raise ConfigError(
                f"label.split must be three fractions >= 0 (train, val, test) summing to 1 "
                f"(got {list(self.split)}); e.g. --split 0.75,0.15,0.10"
            )


@dataclass(frozen=True)
class FetchArgs:
    """Labelled galaxies → ``WS/cube.zarr``: one cutout each, validated, resized, stored.

    ``cutout_url``: the viewer's cutout endpoint (real: https://www.legacysurvey.org/viewer/cutout.jpg;
    offline: http://127.0.0.1:PORT/viewer/cutout.jpg). ``size``: pixels requested; ``radius_scale``:
    pixscale = radius × radius_scale × 2 / size (arcsec/pixel), clipped to ``pixscale_bounds``;
    ``image_size``: pixels stored. ``concurrency`` requests in flight and ``rate`` requests/s are
    totals over all tasks (the service is shared: be polite). ``deadline_s`` bounds one image's
    retries; a service that asks (Retry-After) for a longer wait ends the run. ``give_up_window``
    and ``give_up_fraction``: the run also ends when at least that fraction of the last that many
    answers were failures (the rows not done stay pending for a re-run). ``rows``: which catalog
    rows to request: ``labelled`` (those in ``WS/labels/``), ``all``, or ``auto`` (labelled when
    labels exist, else all); the others stay pending. ``restart`` discards an existing cube.
    """

    workspace: Workspace
    cutout_url: str
    layer: str = "ls-dr10"
    size: int = 250
    image_size: int = 128
    radius_scale: float = 1.5
    pixscale_bounds: tuple[float, float] = (0.01, 20.0)
    concurrency: int = 32
    rate: float = 20.0
    retries: int = 5
    timeout_s: float = 30.0
    deadline_s: float = 300.0
    shard_images: int = 1024
    inner_images: int = 8
    give_up_window: int = 50
    give_up_fraction: float = 0.9
    rows: FetchRows = "auto"
    restart: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", _workspace(self.workspace))
        object.__setattr__(self, "pixscale_bounds", tuple(float(b) for b in self.pixscale_bounds))
        if self.rows not in FETCH_ROWS:
            raise ConfigError(f"fetch.rows must be one of {', '.join(FETCH_ROWS)} (got {self.rows!r})")
        for key in ("size", "image_size", "concurrency", "shard_images", "inner_images", "give_up_window"):
            _positive(f"fetch.{key}", getattr(self, key))
        if self.size > 3000:
            raise ConfigError(f"fetch.size must be <= 3000 pixels, the service's cap (got {self.size})")
        shard_bytes = self.shard_images * self.image_size**2 * 3
        if shard_bytes > MAX_SHARD_BYTES:
            raise ConfigError(
                f"a cube shard of {self.shard_images} images of {self.image_size}x{self.image_size}x3 would take "
                f"{shard_bytes / 2**30:.1f} GiB of memory per fetch task (limit {MAX_SHARD_BYTES / 2**30:.0f} GiB); "
                "lower --image-size or fetch.shard_images"
            )
        if not 0 < self.give_up_fraction <= 1:
            raise ConfigError(f"fetch.give_up_fraction must be in (0, 1] (got {self.give_up_fraction})")
        if self.retries < 0:
            raise ConfigError(f"fetch.retries must be >= 0 (got {self.retries})")
        for key in ("rate", "timeout_s", "deadline_s", "radius_scale"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"fetch.{key} must be a positive number (got {value!r})")
        low, high = self.pixscale_bounds
        if not 0 < low < high:
            raise ConfigError(
                f"fetch.pixscale_bounds must be [low, high] arcsec/pixel with 0 < low < high (got {low}, {high})"
            )
        if self.shard_images % self.inner_images:
            raise ConfigError(
                f"fetch.shard_images ({self.shard_images}) must be a multiple of "
                f"fetch.inner_images ({self.inner_images})"
            )


MAX_SHARD_BYTES = 1 << 30  # one fetch task holds a whole cube shard in memory


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
    order and augmentation. ``restart`` discards an existing model directory.
    """

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
    restart: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", _workspace(self.workspace))
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"train.model must be one of {', '.join(MODEL_NAMES)} (got {self.model!r})")
        object.__setattr__(self, "name", _model_name("train.name", self.name or self.model))
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise ConfigError(f"train.seed must be an integer in [0, 2**32) (got {self.seed!r})")
        for key in ("epochs", "batch_size", "shuffle_buffer", "block_rows", "readers", "prefetch"):
            _positive(f"train.{key}", getattr(self, key))
        _positive("train.devices", self.devices, optional=True)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and 0 < self.lr < 1):
            raise ConfigError(f"train.lr must be a learning rate in (0, 1) (got {self.lr!r}); Adam's default is 0.001")
        for key, allowed in (("precision", Precision), ("accelerator", Accelerator), ("composites", Composites),
                             ("class_weight", ClassWeight)):  # fmt: skip
            value = getattr(self, key)
            if value not in get_args(allowed):
                raise ConfigError(f"train.{key} must be one of {', '.join(get_args(allowed))} (got {value!r})")


@dataclass(frozen=True)
class EvaluateArgs:
    """A trained model + the val and test splits → threshold, metrics and plots in ``WS/reports/``.

    ``threshold_policy``: how the threshold is chosen on the *validation* split: ``balanced``
    (max balanced accuracy), ``youden`` (max TPR - FPR), ``f1`` (max F1), ``purity:P`` (lowest
    threshold whose AGN precision >= P), ``fixed:T``. ``tta``: average the 8 flips/rotations.
    """

    workspace: Workspace
    model: str = "paper"
    threshold_policy: str = "balanced"
    tta: bool = False
    batch_size: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", _workspace(self.workspace))
        _model_name("evaluate.model", self.model)
        _positive("evaluate.batch_size", self.batch_size)
        parse_policy(self.threshold_policy)


@dataclass(frozen=True)
class ScoreArgs:
    """A trained model + any catalog → ``WS/scores/`` Parquet: P(AGN) and a label for every row.

    ``model``: the directory ``train`` wrote (or its ``model.keras``, or a name under WS/models/);
    its ``threshold.json`` (from ``evaluate``) gives the label's threshold unless ``threshold`` is
    set. ``inputs``: catalog files read and column-mapped as ``ingest`` does (``columns``,
    ``radius_column``, ``format``, ``hdu``, ``id_kind``); none: the workspace's own catalog. Pixels
    come from a cube fetched with the ``[fetch]`` settings (``fetch``), or with ``images`` from a
    column of local image paths (JPEG/PNG of any size; relative paths are relative to the catalog
    file), read in parts of ``part_rows`` rows. ``batch_size``: images per prediction (None: 1024
    on a GPU, 256 on a CPU). ``tta``: average the 8 flips/rotations. ``restart``: discard earlier
    scores (needed to score with another model, threshold or catalog).
    """

    workspace: Workspace
    model: str
    inputs: tuple[str, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)
    radius_column: str = "PETROTH90"
    format: Literal["auto", "fits", "parquet", "csv"] = "auto"
    hdu: int | None = None
    id_kind: IdKind = "auto"
    images: str | None = None
    threshold: float | None = None
    batch_size: int | None = None
    tta: bool = False
    part_rows: int = 1024
    restart: bool = False
    fetch: FetchArgs | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", _workspace(self.workspace))
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        object.__setattr__(self, "columns", dict(self.columns))
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("score.model: give the model directory train wrote, e.g. --model ws/models/paper")
        if self.images is not None and not self.inputs:
            raise ConfigError("score --images COLUMN needs the catalog that holds the column (agnsurvey score CATALOG)")
        if self.threshold is not None and not (isinstance(self.threshold, int | float) and 0 < self.threshold < 1):
            raise ConfigError(f"score.threshold must be in (0, 1) (got {self.threshold!r})")
        _positive("score.batch_size", self.batch_size, optional=True)
        _positive("score.part_rows", self.part_rows)
        for key in self.columns:
            if key not in CANONICAL_COLUMNS:
                raise ConfigError(f"score.columns: unknown canonical column {key!r}; use one of "
                                  f"{', '.join(CANONICAL_COLUMNS)}")  # fmt: skip
        if self.id_kind not in ID_KINDS:
            raise ConfigError(f"score.id_kind must be one of {', '.join(ID_KINDS)} (got {self.id_kind!r})")


RUN_STAGES: tuple[str, ...] = ("sky", "ingest", "label", "fetch", "train", "evaluate", "score")
OFFLINE_URL = "offline"  # fetch.cutout_url of a run: start the offline sky server for the run's catalog
OFFLINE_RATE, OFFLINE_CONCURRENCY = 2000.0, 64  # the offline server is ours: no politeness limit needed


@dataclass(frozen=True)
class RunArgs:
    """The whole pipeline, one table per stage: ``sky`` (None when ``ingest.inputs`` names catalog
    files), ingest, label, fetch (``cutout_url`` ``offline``: an offline sky server is started for
    the run), train, evaluate, and score (None: not configured). ``until``: the last stage to run.
    ``serve``: the offline server's ``[serve]`` table. ``restart``: rebuild a workspace made from
    other inputs (its cutouts are fetched again)."""

    workspace: Workspace
    ingest: IngestArgs
    label: LabelArgs
    fetch: FetchArgs
    train: TrainArgs
    evaluate: EvaluateArgs
    sky: SkyArgs | None = None
    score: ScoreArgs | None = None
    serve: Mapping[str, Any] = field(default_factory=dict)
    until: str = "score"
    restart: bool = False

    def __post_init__(self) -> None:
        if self.until not in RUN_STAGES[1:]:
            raise ConfigError(f"run.until must be one of {', '.join(RUN_STAGES[1:])} (got {self.until!r})")

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this run executes, in order."""
        wanted = [s for s in RUN_STAGES if (s != "sky" or self.sky) and (s != "score" or self.score)]
        last = RUN_STAGES.index(self.until)
        return tuple(s for s in wanted if RUN_STAGES.index(s) <= last)


def run_args(
    raw: Mapping[str, Any],
    workspace: str | Path | None = None,
    catalogs: tuple[str, ...] | None = None,
    score: bool | None = None,
    until: str | None = None,
    restart: bool | None = None,
    **sections: Mapping[str, Any],
) -> RunArgs:
    """Every stage's arguments from a config (``load_config``) plus overrides, one mapping per table
    in ``sections`` (None values: not given). Validated before anything runs. Without catalog files
    (``catalogs`` or ``ingest.inputs``) the run makes an offline sky in ``WS/sky/``; without
    ``fetch.cutout_url`` it serves that sky's cutouts itself. ``score`` (default: when the config
    has a ``[score]`` table) scores ``score.inputs`` or, without them, every row of the catalog."""
    ws = _workspace(workspace or raw.get("workspace") or "")
    if not (workspace or raw.get("workspace")):
        raise ConfigError("run needs a workspace: give --workspace DIR or workspace = \"DIR\" in the config file")
    over = {name: {k: v for k, v in sections.get(name, {}).items() if v is not None} for name in RUN_STAGES}
    inputs = tuple(catalogs or ()) or tuple(raw.get("ingest", {}).get("inputs", ()))
    sky = None if inputs else build(SkyArgs, raw, "sky", out=ws.root / "sky", **over["sky"])
    inputs = inputs or (str(ws.root / "sky" / "nsa_sky.fits"),)
    ingest = build(IngestArgs, raw, "ingest", workspace=ws, **{**over["ingest"], "inputs": inputs})
    label = build(LabelArgs, raw, "label", workspace=ws, **over["label"])
    table = raw.get("fetch", {})
    fetch_over = dict(over["fetch"])
    if not (fetch_over.get("cutout_url") or table.get("cutout_url")):
        fetch_over["cutout_url"] = OFFLINE_URL
    if fetch_over.get("cutout_url", table.get("cutout_url")) == OFFLINE_URL:
        fetch_over.setdefault("rate", table.get("rate", OFFLINE_RATE))
        fetch_over.setdefault("concurrency", table.get("concurrency", OFFLINE_CONCURRENCY))
    fetch = build(FetchArgs, raw, "fetch", workspace=ws, **fetch_over)
    train = build(TrainArgs, raw, "train", workspace=ws, **over["train"])
    evaluate = build(EvaluateArgs, raw, "evaluate", workspace=ws, **{**over["evaluate"], "model": train.name})
    scored = None
    if score if score is not None else "score" in raw:
        model = str(ws.models / train.name)
        scored = build(ScoreArgs, raw, "score", workspace=ws, **{**over["score"], "model": model, "fetch": fetch})
        if scored.inputs and not scored.images and fetch.cutout_url == OFFLINE_URL:
            raise ConfigError("score.inputs with the offline sky server: it serves only the run's own catalog; "
                              "give fetch.cutout_url, or score.images for local files")  # fmt: skip
        if not scored.inputs and not scored.images:  # scoring every catalog row: fetch them all at once
            fetch = dataclasses.replace(fetch, rows="all")
            scored = dataclasses.replace(scored, fetch=fetch)
    return RunArgs(workspace=ws, ingest=ingest, label=label, fetch=fetch, train=train, evaluate=evaluate, sky=sky,
                   score=scored, serve=dict(raw.get("serve", {})), until=until or raw.get("run", {}).get("until",
                   "score"), restart=bool(restart))  # fmt: skip


def _model_name(key: str, name: str) -> str:
    """A model directory's name (under WS/models/): letters, digits, '-', '_', '.'; no path."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        raise ConfigError(f"{key} {name!r} must be letters, digits, '-', '_' or '.' (a directory under WS/models/)")
    return name


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


def _workspace(value: Workspace | str | Path) -> Workspace:
    try:
        return as_workspace(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _positive(key: str, value: int | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer (got {value!r})")


SECTIONS: dict[str, type] = {
    "cluster": ClusterConfig,
    "sky": SkyArgs,
    "ingest": IngestArgs,
    "label": LabelArgs,
    "fetch": FetchArgs,
    "train": TrainArgs,
    "evaluate": EvaluateArgs,
    "score": ScoreArgs,
}
TOP_LEVEL_KEYS = {"workspace"}
RUN_TABLE = {"until": str}  # [run]: the last stage `agnsurvey run` executes
INTERNAL_KEYS = {"workspace", "out", "fetch"}  # set by the command line or from other tables
SELF_CHECKED_TABLES = {"serve"}  # validated by its own builder (pipeline.synthetic.server.build_server_config)


RENAMED_KEYS = {
    "ingest.shard_rows": " (renamed: the catalog is a HATS catalog now, cut into HEALPix partitions of at most "
    "ingest.max_rows rows)",
}


def load_config(path: Path | str | None) -> dict[str, Any]:
    """Read and check a TOML config file: known tables and keys, right types. None → empty."""
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing file to --config") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            hints = typing.get_type_hints(SECTIONS[key])
            for sub, subvalue in value.items():
                if sub not in hints or sub in INTERNAL_KEYS:
                    allowed = sorted(set(hints) - INTERNAL_KEYS)
                    renamed = RENAMED_KEYS.get(f"{key}.{sub}", "")
                    raise ConfigError(f"{path}: unknown key {key}.{sub}{renamed}; known keys of [{key}]: "
                                      f"{', '.join(allowed)}")  # fmt: skip
                _check_type(f"{key}.{sub}", subvalue, hints[sub], path)
        elif key == "run":
            if not isinstance(value, dict) or set(value) - set(RUN_TABLE) or not all(map(_is_str, value.values())):
                raise ConfigError(f"{path}: [run] takes until = one of {', '.join(RUN_STAGES[1:])} (got {value!r})")
        elif key == "workspace" and not isinstance(value, str):
            raise ConfigError(f'{path}: workspace = {value!r} must be a path in quotes, e.g. workspace = "ws"')
        elif key not in TOP_LEVEL_KEYS | SELF_CHECKED_TABLES:
            known = ", ".join(sorted(TOP_LEVEL_KEYS | SELF_CHECKED_TABLES | set(SECTIONS)))
            raise ConfigError(f"{path}: unknown key {key!r}; known top-level keys and tables: {known}")
    return raw


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _check_type(key: str, value: Any, hint: Any, path: Path) -> None:
    if _matches(value, hint):
        return
    raise ConfigError(f"{path}: {key} = {value!r} has the wrong type; expected {_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if origin in (tuple,):
        args = get_args(hint)
        fixed = len(args) != 2 or args[1] is not Ellipsis
        if not isinstance(value, list | tuple) or (fixed and len(value) != len(args)):
            return False
        return all(_matches(v, args[0]) for v in value)
    if origin in (Mapping, dict):
        any_values = get_args(hint)[1:] == (Any,)
        return isinstance(value, dict) and (any_values or all(isinstance(v, str) for v in value.values()))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    if hint is Path:
        return isinstance(value, str)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in get_args(hint) if h is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is tuple:
        args = get_args(hint)
        return "a list of values" if len(args) == 2 and args[1] is Ellipsis else f"a list of {len(args)} numbers"
    if origin in (Mapping, dict):
        return "a table of strings"
    return getattr(hint, "__name__", str(hint))


def build(cls: type, raw: Mapping[str, Any], section: str, **overrides: Any) -> Any:
    """Construct a stage's argument dataclass from the config's ``[section]`` table plus CLI values.

    Command-line values that are None (flag not given) leave the file's or the default value.
    """
    values = dict(raw.get(section, {}))
    if "workspace" in {f.name for f in dataclasses.fields(cls)} and "workspace" in raw:
        values.setdefault("workspace", raw["workspace"])
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "columns" and values.get("columns"):
            value = {**values["columns"], **value}
        values[key] = value
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and _required(f)]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)}: give --{missing[0].replace('_', '-')} or set it in the config file"
        )
    return cls(**values)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
