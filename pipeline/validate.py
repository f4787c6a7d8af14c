"""Checks shared by the stages' argument classes: each raises a :class:`ConfigError` naming the key."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError
from storage.workspace import Workspace, as_workspace


def model_name(key: str, name: str) -> str:
    """A model directory's name (under WS/models/): letters, digits, '-', '_', '.'; no path."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        raise ConfigError(f"{key} {name!r} must be letters, digits, '-', '_' or '.' (a directory under WS/models/)")
    return name


def workspace(value: Workspace | str | Path) -> Workspace:
    """The run's :class:`Workspace` of a path (a URL is refused, with the reason)."""
    try:
        return as_workspace(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def one_of(key: str, value: object, allowed: tuple[str, ...]) -> None:
    """``value`` is one of ``allowed``; the error lists them (``label.scheme must be one of ...``)."""
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)} (got {value!r})")


def positive(key: str, value: int | None, optional: bool = False) -> None:
    """``value`` is an integer > 0 (or, with ``optional``, None); ``key`` names it (``ingest.max_rows``)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer (got {value!r})")
