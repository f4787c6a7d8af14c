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
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

from pipeline import validate
from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.errors import ConfigError
from pipeline.images.args import FetchArgs
from pipeline.learn.args import EvaluateArgs, TrainArgs
from pipeline.score.args import ScoreArgs
from pipeline.synthetic.args import BrickArgs, SkyArgs
from storage.workspace import Workspace


@dataclass(frozen=True)
class ClusterConfig:
    """Where the Dask graphs run. ``spec``: local, local:N, local-cuda, slurm, tcp://host:port or a
    scheduler file; ``n_workers`` and ``threads_per_worker`` size a local cluster; ``slurm``: the
    ``[cluster.slurm]`` table (queue, account, walltime, cores, memory, processes, jobs, ...)."""

    SECTION: ClassVar[str] = "cluster"  # its table in the TOML config

    spec: str = "local"
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    slurm: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate.positive("cluster.n_workers", self.n_workers, optional=True)
        validate.positive("cluster.threads_per_worker", self.threads_per_worker, optional=True)
        from cluster.client import ClusterSpecError, SlurmSettings

        try:
            object.__setattr__(self, "slurm", SlurmSettings.from_table(self.slurm))
        except (ClusterSpecError, TypeError) as exc:
            raise ConfigError(f"[cluster.slurm]: {exc}") from None


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
        validate.one_of("run.until", self.until, RUN_STAGES[1:])

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
    ws = validate.workspace(workspace or raw.get("workspace") or "")
    if not (workspace or raw.get("workspace")):
        raise ConfigError("run needs a workspace: give --workspace DIR or workspace = \"DIR\" in the config file")
    over = {name: {k: v for k, v in sections.get(name, {}).items() if v is not None} for name in RUN_STAGES}
    inputs = tuple(catalogs or ()) or tuple(raw.get("ingest", {}).get("inputs", ()))
    sky = None if inputs else build(SkyArgs, raw, out=ws.root / "sky", **over["sky"])
    inputs = inputs or (str(ws.root / "sky" / "nsa_sky.fits"),)
    ingest = build(IngestArgs, raw, workspace=ws, **{**over["ingest"], "inputs": inputs})
    label = build(LabelArgs, raw, workspace=ws, **over["label"])
    table = raw.get("fetch", {})
    fetch_over = dict(over["fetch"])
    if not (fetch_over.get("cutout_url") or table.get("cutout_url")):
        fetch_over["cutout_url"] = OFFLINE_URL
    if fetch_over.get("cutout_url", table.get("cutout_url")) == OFFLINE_URL:
        fetch_over.setdefault("rate", table.get("rate", OFFLINE_RATE))
        fetch_over.setdefault("concurrency", table.get("concurrency", OFFLINE_CONCURRENCY))
    fetch = build(FetchArgs, raw, workspace=ws, **fetch_over)
    train = build(TrainArgs, raw, workspace=ws, **over["train"])
    evaluate = build(EvaluateArgs, raw, workspace=ws, **{**over["evaluate"], "model": train.name})
    scored = None
    if score if score is not None else "score" in raw:
        model = str(ws.models / train.name)
        scored = build(ScoreArgs, raw, workspace=ws, **{**over["score"], "model": model, "fetch": fetch})
        if scored.inputs and not scored.images and fetch.cutout_url == OFFLINE_URL:
            raise ConfigError("score.inputs with the offline sky server: it serves only the run's own catalog; "
                              "give fetch.cutout_url, or score.images for local files")  # fmt: skip
        if not scored.inputs and not scored.images:  # scoring every catalog row: fetch them all at once
            fetch = dataclasses.replace(fetch, rows="all")
            scored = dataclasses.replace(scored, fetch=fetch)
    return RunArgs(workspace=ws, ingest=ingest, label=label, fetch=fetch, train=train, evaluate=evaluate, sky=sky,
                   score=scored, serve=dict(raw.get("serve", {})), until=until or raw.get("run", {}).get("until",
                   "score"), restart=bool(restart))  # fmt: skip


ARGUMENTS: tuple[type, ...] = (ClusterConfig, SkyArgs, BrickArgs, IngestArgs, LabelArgs, FetchArgs, TrainArgs,
                                EvaluateArgs, ScoreArgs)  # fmt: skip
SECTIONS: dict[str, type] = {cls.SECTION: cls for cls in ARGUMENTS}  # each class names its own table
TOP_LEVEL_KEYS = {"workspace"}
RUN_TABLE = {"until": str}  # [run]: the last stage `agnsurvey run` executes
SELF_CHECKED_TABLES = {"serve"}  # validated by its own builder (pipeline.synthetic.server_config.build_server_config)


def file_keys(cls: type) -> dict[str, Any]:
    """The keys a config file may set in ``cls``'s table, with their types: its fields, less
    ``workspace`` (top level) and those the class says are set elsewhere (``INTERNAL``)."""
    internal = {"workspace", *getattr(cls, "INTERNAL", ())}
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in internal}


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
            hints = file_keys(SECTIONS[key])
            for sub, subvalue in value.items():
                if sub not in hints:
                    renamed = getattr(SECTIONS[key], "RENAMED", {}).get(sub)
                    renamed = f" (renamed: {renamed})" if renamed else ""
                    raise ConfigError(f"{path}: unknown key {key}.{sub}{renamed}; known keys of [{key}]: "
                                      f"{', '.join(sorted(hints))}")  # fmt: skip
                _check_type(f"{key}.{sub}", subvalue, hints[sub], path)
        elif key == "run":
            if not isinstance(value, dict) or set(value) - set(RUN_TABLE) or not all(map(_is_str, value.values())):
                raise ConfigError(f"{path}: [run] takes until = one of {', '.join(RUN_STAGES[1:])} (got {value!r})")
        elif key == "workspace" and not isinstance(value, str):
            raise ConfigError(f'{path}: workspace = {value!r} must be a path in quotes, e.g. workspace = "ws"')
        elif key not in TOP_LEVEL_KEYS | SELF_CHECKED_TABLES:
            known = ", ".join(sorted(TOP_LEVEL_KEYS | SELF_CHECKED_TABLES | set(SECTIONS)))
            raise ConfigError(f"{path}: unknown key {key!r}; known top-level keys and tables: {known}")
    return relative_to_file(raw, path.parent)


PATH_KEYS = (
    ((), "workspace"), (("ingest",), "inputs"), (("score",), "inputs"), (("fetch",), "bricks"),
    (("cluster", "slurm"), "log_directory"),
)
"""(tables, key) of a config's paths: read relative to the config file's directory, as `init` writes them."""


def relative_to_file(raw: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``raw`` with its relative paths (:data:`PATH_KEYS`; URLs and absolute paths as they are) made
    relative to ``directory``, so a config means the same files from whatever directory it is run."""

    def anchored(value: Any) -> Any:
        if isinstance(value, list):
            return [anchored(v) for v in value]
        if not isinstance(value, str) or "://" in value:
            return value
        if Path(value).expanduser().is_absolute():  # ~ too: the jobs' log paths reach no shell
            return str(Path(value).expanduser()) if value.startswith("~") else value
        return str(directory / value)

    def replaced(table: Any, tables: tuple[str, ...], key: str) -> Any:
        if not isinstance(table, dict):
            return table
        if tables:
            inner = tables[0]
            return table | {inner: replaced(table[inner], tables[1:], key)} if inner in table else table
        return table | {key: anchored(table[key])} if key in table else table

    out = dict(raw)
    for tables, key in PATH_KEYS:
        out = replaced(out, tables, key)
    return out


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


def build(cls: type, raw: Mapping[str, Any], section: str | None = None, **overrides: Any) -> Any:
    """Construct a stage's argument dataclass from the config's ``[section]`` table (default: the
    class's own, ``cls.SECTION``) plus CLI values.

    Command-line values that are None (flag not given) leave the file's or the default value.
    """
    values = dict(raw.get(section or cls.SECTION, {}))
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
