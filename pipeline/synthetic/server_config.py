"""The offline server's settings: what it serves, where, and which faults it injects (``[serve]``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import validate
from pipeline.errors import ConfigError

TruncateMode = Literal["body", "close"]
ExecutorKind = Literal["thread", "process"]


@dataclass(frozen=True)
class Faults:
    """Injected faults, all off by default (:mod:`pipeline.synthetic.server` says in which order they
    are decided and what each does).

    Times in seconds, rates as fractions of requests in [0, 1], ``throttle_rate`` in requests/s.
    """

    latency_s: float = 0.0
    jitter_s: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float | None = None
    throttle_burst: int | None = None  # bucket depth; None: max(1, ceil(throttle_rate))
    retry_after_s: float = 1.0  # sent on 429 and overload 503; an integer unless given a fraction
    truncate_rate: float = 0.0
    truncate_mode: TruncateMode = "body"
    hang_rate: float = 0.0
    hang_s: float = 300.0
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for key in ("latency_s", "jitter_s", "retry_after_s"):
            _non_negative(f"faults.{key}", getattr(self, key))
        for key in ("error_rate", "truncate_rate", "hang_rate"):
            value = getattr(self, key)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"faults.{key} must be a fraction in [0, 1] (got {value!r}); 0 turns it off")
        if self.throttle_rate is not None and (not _is_number(self.throttle_rate) or not self.throttle_rate > 0):
            raise ConfigError(
                f"faults.throttle_rate must be > 0 requests/s (got {self.throttle_rate!r}); omit it for no throttling"
            )
        if self.throttle_burst is not None:
            validate.positive("faults.throttle_burst", self.throttle_burst)
            if self.throttle_rate is None:
                raise ConfigError("faults.throttle_burst needs faults.throttle_rate (the bucket's refill rate)")
        if self.truncate_mode not in ("body", "close"):
            raise ConfigError(f"faults.truncate_mode must be 'body' or 'close' (got {self.truncate_mode!r})")
        if not _is_number(self.hang_s) or not self.hang_s > 0:
            raise ConfigError(f"faults.hang_s must be > 0 seconds (got {self.hang_s!r})")
        if self.max_concurrent is not None:
            validate.positive("faults.max_concurrent", self.max_concurrent)

    @property
    def burst(self) -> int:
        """Depth of the throttle's token bucket."""
        if self.throttle_burst is not None:
            return self.throttle_burst
        return max(1, math.ceil(self.throttle_rate or 1.0))

    @property
    def random(self) -> bool:
        """Whether any decision needs a random draw (and so the per-query attempt count)."""
        return bool(self.error_rate or self.truncate_rate or self.hang_rate or self.jitter_s)

    def active(self) -> dict[str, Any]:
        """The faults that are on, as config keys and values."""
        defaults = Faults()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        }


@dataclass(frozen=True)
class ServerConfig:
    """The offline cutout server: what it serves, where, and how badly.

    ``catalog``: catalog file(s) as for ``agnsurvey ingest`` (ignored when ``CutoutServer`` is given
    an index). ``port`` 0 picks a free port (read it from ``CutoutServer.url``).
    ``tolerance_arcsec``: how far a request may lie from a galaxy and still be that galaxy's cutout.
    ``workers``/``executor``: the render pool (threads, or spawned processes for throughput).
    ``cache_mb``: LRU cache of encoded JPEGs (retries and repeats are not re-rendered).
    ``max_neighbours``: at most this many neighbours drawn, nearest first (huge fields stay cheap).
    ``log_limit``: request log length kept (oldest dropped); None keeps all.
    """

    catalog: Path | str | tuple[str, ...] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    tolerance_arcsec: float = 3.0
    jpeg_quality: int = 90
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    layers: tuple[str, ...] | None = None
    columns: Mapping[str, str] | None = None
    radius_column: str = "PETROTH90"
    workers: int | None = None
    executor: ExecutorKind = "thread"
    cache_mb: float = 64.0
    max_neighbours: int = 200
    log_limit: int | None = 100_000

    def __post_init__(self) -> None:
        if isinstance(self.faults, Mapping):
            object.__setattr__(self, "faults", _faults_from(self.faults))
        elif not isinstance(self.faults, Faults):
            raise ConfigError(f"serve.faults must be a table of fault settings (got {type(self.faults).__name__})")
        if isinstance(self.catalog, list):
            object.__setattr__(self, "catalog", tuple(str(c) for c in self.catalog))
        if isinstance(self.layers, list | str):
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            object.__setattr__(self, "layers", layers)
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"serve.host must be a host name or address (got {self.host!r}), e.g. 127.0.0.1")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be 0 (any free port) or 1-65535 (got {self.port!r})")
        if not _is_number(self.tolerance_arcsec) or not self.tolerance_arcsec > 0:
            raise ConfigError(f"serve.tolerance_arcsec must be > 0 arcsec (got {self.tolerance_arcsec!r})")
        if not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"serve.jpeg_quality must be an integer 1-100 (got {self.jpeg_quality!r}); 90 is usual")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"serve.seed must be an integer >= 0 (got {self.seed!r})")
        if self.workers is not None:
            validate.positive("serve.workers", self.workers)
        if self.executor not in ("thread", "process"):
            raise ConfigError(f"serve.executor must be 'thread' or 'process' (got {self.executor!r})")
        _non_negative("serve.cache_mb", self.cache_mb)
        if not isinstance(self.max_neighbours, int) or self.max_neighbours < 0:
            raise ConfigError(f"serve.max_neighbours must be an integer >= 0 (got {self.max_neighbours!r})")
        if self.log_limit is not None and (not isinstance(self.log_limit, int) or self.log_limit < 0):
            raise ConfigError(
                f"serve.log_limit must be an integer >= 0, or omitted to keep all (got {self.log_limit!r})"
            )


FAULT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Faults))
CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ServerConfig))


def build_server_config(section: Mapping[str, Any] | None = None, **overrides: Any) -> ServerConfig:
    """A :class:`ServerConfig` from a config file's ``[serve]`` table (``faults`` a sub-table) and
    command-line values; an override may name a ServerConfig key or a Faults key, and None means
    "not given" (the file's or the default value stays).
    """
    values = dict(section or {})
    faults = dict(values.pop("faults", None) or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key in FAULT_KEYS:
            faults[key] = value
        elif key in CONFIG_KEYS and key != "faults":
            values[key] = value
        else:
            raise ConfigError(f"unknown server setting {key!r}; known: {', '.join(CONFIG_KEYS + FAULT_KEYS)}")
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"[serve]: unknown key {unknown[0]!r}; known keys: {', '.join(CONFIG_KEYS)}")
    return ServerConfig(**values, faults=_faults_from(faults))


def _faults_from(values: Mapping[str, Any]) -> Faults:
    unknown = sorted(set(values) - set(FAULT_KEYS))
    if unknown:
        raise ConfigError(f"[serve.faults]: unknown key {unknown[0]!r}; known keys: {', '.join(FAULT_KEYS)}")
    return Faults(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative(key: str, value: Any) -> None:
    if not _is_number(value) or value < 0:
        raise ConfigError(f"{key} must be a number >= 0 (got {value!r})")
