"""The run layout: one workspace directory per run, every stage's output at a fixed place.

```
WS/ catalog/  labels/  cube.zarr  cube_failures.parquet  models/  reports/  scores/  manifests/
    .locks/   one lock file per stage output (who is writing it)
```
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.manifest import read_manifest, write_json_atomic


class WorkspaceBusy(RuntimeError):
    """Another process is writing the same stage output; the message names it."""


@dataclass(frozen=True)
class Workspace:
    """A run's directory (local path). Paths are properties so nothing else spells them."""

    root: Path

    def __post_init__(self) -> None:
        if "://" in str(self.root):
            raise ValueError(
                f"workspace {self.root!r}: only local paths are supported so far (mount the bucket, or use a "
                "shared file system that every worker sees)"
            )
        object.__setattr__(self, "root", Path(self.root).expanduser().absolute())
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"workspace {self.root} is a file; give a directory (it is created if missing)")

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def cube(self) -> Path:
        return self.root / "cube.zarr"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def manifest_path(self, stage: str) -> Path:
        return self.manifests / f"{stage}.json"

    def write_manifest(self, stage: str, payload: dict[str, Any]) -> Path:
        return write_json_atomic(self.manifest_path(stage), payload)

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        return read_manifest(path) if path.exists() else None

    @contextmanager
    def lock(self, output: str) -> Iterator[None]:
        """Hold the writer's lock of one stage output (``catalog``, ``labels``, ``cube``, ...) for the block.

        One writer per output at a time: a second one gets :class:`WorkspaceBusy` naming the first
        (pid, host, command, start time). Readers take no lock. The lock is an ``flock`` on
        ``WS/.locks/<output>.lock``: the OS releases it when the holder exits, however it exits (a
        SIGKILL never leaves a workspace locked); the file itself stays and means nothing alone.
        """
        path = self.root / ".locks" / f"{output}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkspaceBusy(_busy_message(self.root / output, path)) from None
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
                "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock


def _busy_message(output: Path, lock_file: Path) -> str:
    try:
        holder = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("since"):
        who += f", since {holder['since']}"
    if holder.get("command"):
        who += f": `{holder['command']}`"
    return (
        f"{output} is being written by another run ({who}); wait for it to finish or stop it, "
        "or use another --workspace (reading the workspace is never blocked)"
    )


def as_workspace(value: Workspace | str | Path) -> Workspace:
    """A :class:`Workspace` from itself or from a path."""
    return value if isinstance(value, Workspace) else Workspace(value)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename.

    A run killed half-way leaves ``final`` as it was (the old complete output, or nothing) plus a
    hidden ``.final.tmp-*`` directory that the next run removes.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    olds = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not final.exists():  # killed between the two renames last time: put the old output back
        os.replace(olds.pop(), final)
    for stale in [*olds, *final.parent.glob(f".{final.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
