"""The run layout: one workspace directory per run, every stage's output at a fixed place.

```
WS/ catalog/  labels/  cube.zarr  cube_failures.parquet  models/  reports/  scores/  manifests/
    .locks/   one lock file per stage output (who is writing it)
```
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.fence import Fence, current_token, set_fence
from storage.manifest import read_manifest, write_json_atomic


class WorkspaceBusy(RuntimeError):
    """Another process is writing the same stage output; the message names it."""


_tokens: dict[str, list[str]] = {}  # lock file → [its lock's first token, its current one], of this process's writers
_cleaned_last: list[Callable[[], None]] | None = None  # cleanups that wait for clean_up_last() to end


@contextmanager
def clean_up_last() -> Iterator[None]:
    """Within this block, what a failed or interrupted writer leaves is cleaned up when the block
    ends rather than at once: its temporary directory is removed, then its lock released. A
    command wraps itself in it, outside its embedded cluster, so that tasks still running on the
    cluster's workers (which may still be writing there) are stopped first; and by then Ctrl-C has
    been taken, so no second interrupt cuts the removal short."""
    global _cleaned_last
    outer, _cleaned_last = _cleaned_last, []
    try:
        yield
    finally:
        cleanups, _cleaned_last = _cleaned_last, outer
        for cleanup in cleanups:
            with contextlib.suppress(OSError):
                cleanup()


def _clean_up(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` now, or at the end of the :func:`clean_up_last` block this runs in."""
    if _cleaned_last is None:
        cleanup()
    else:
        _cleaned_last.append(cleanup)


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

    def output_path(self, output: str) -> Path:
        """Where the stage output named ``output`` lives (the workspace itself for a whole ``run``);
        ``models/NAME`` is one model's directory."""
        if output.startswith("models/"):
            return self.models / output.removeprefix("models/")
        return {"catalog": self.catalog, "labels": self.labels, "cube": self.cube, "models": self.models,
                "scores": self.scores}.get(output, self.root)  # fmt: skip

    def manifest_path(self, stage: str) -> Path:
        return self.manifests / f"{stage}.json"

    def write_manifest(self, stage: str, payload: dict[str, Any]) -> Path:
        return write_json_atomic(self.manifest_path(stage), payload)

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        return read_manifest(path) if path.exists() else None

    @contextmanager
    def lock(self, output: str, shared: bool = False) -> Iterator[None]:
        """Hold the lock of one stage output (``catalog``, ``labels``, ``cube``, ...) for the block.

        One writer per output at a time, and none while a stage that derives from it reads it
        (``shared``: ``label`` reading the catalog); the one refused gets :class:`WorkspaceBusy`
        naming the holder (pid, host, command, start time). Users reading results take no lock.
        The lock is an ``flock`` on ``WS/.locks/<output>.lock``: the OS releases it when the holder
        exits, however it exits (a SIGKILL never leaves a workspace locked). A writer's lock also
        sets a fencing token that tasks writing for it check (:meth:`fence`).
        """
        path = self._lock_file(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        me, token = "", "" if shared else uuid.uuid4().hex
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkspaceBusy(_busy_message(self.output_path(output), path)) from None
            fence = path.with_suffix(".fence")
            if (token or current_token(fence)) and not set_fence(fence, token, _FENCE_WAIT_S):
                # a reader clears a token too: it proves no writer holds the lock (one killed left it)
                raise WorkspaceBusy(
                    f"{self.output_path(output)}: a task of an earlier run is still writing it "
                    f"({_FENCE_WAIT_S:.0f} s waited); wait for that run's workers to stop, then retry"
                )
            if token:
                _tokens[str(path)] = [token, token]
            me = json.dumps({
                "mode": "read" if shared else "write",
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
                "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "id": uuid.uuid4().hex,  # one line per holder: nested readers of one process differ
            })  # fmt: skip
            _edit_holders(path, lambda lines: [*filter(_live_reader, lines), me] if shared else [me])
            yield
        except BaseException:
            held, fd = fd, -1
            _clean_up(functools.partial(_release, path, held, me, token))  # once the command's cluster has stopped
            raise
        finally:
            if fd >= 0:
                _release(path, fd, me, token)

    def fence(self, output: str) -> Fence:
        """The fence a task writing ``output`` for this process's run carries (this process must hold
        ``output``'s writer's lock): its writes land only while the run still holds it."""
        return Fence(str(self._lock_file(output).with_suffix(".fence")), self._held(output)[1],
                     str(self.output_path(output)))  # fmt: skip

    def renew_fence(self, output: str) -> Fence:
        """A new :meth:`fence` for ``output``, once the writes holding the current one have ended;
        tasks carrying an earlier one write nothing from now on (an attempt given up for another)."""
        held = self._held(output)
        token = uuid.uuid4().hex
        set_fence(self._lock_file(output).with_suffix(".fence"), token, None)
        held[1] = token
        return self.fence(output)

    def _lock_file(self, output: str) -> Path:
        return self.root / ".locks" / f"{output}.lock"

    def _held(self, output: str) -> list[str]:
        """[first token, current token] of ``output``'s writer's lock, which this process must hold."""
        held = _tokens.get(str(self._lock_file(output)))
        if held is None:
            raise RuntimeError(f"{output}: this process holds no writer's lock of it; write within Workspace.lock")
        return held


_FENCE_WAIT_S = 60.0  # seconds a writer waits for an earlier run's task to finish its write


def _edit_holders(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite the lock file's holder lines (one JSON object per holder) with ``edit``, one process at
    a time (readers share the lock, so two may edit at once: a second lock file orders them). Best
    effort: the flock is the lock, these lines only name its holders in a refusal."""
    with contextlib.suppress(OSError), open(path.with_suffix(".holders-lock"), "a") as guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        lines = [line for line in _read_lines(path) if line.strip()]
        path.write_text("".join(f"{line}\n" for line in edit(lines)))


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _holder(line: str) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError):
        holder = json.loads(line)
        return holder if isinstance(holder, dict) else None
    return None


def _live_reader(line: str) -> bool:
    """A reader's line of a process that may still run (a reader holds the lock: no writer does)."""
    holder = _holder(line)
    return holder is not None and holder.get("mode") == "read" and _alive(holder)


def _alive(holder: dict[str, Any]) -> bool:
    """False only for a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    return True


def _release(path: Path, fd: int, me: str, token: str = "") -> None:
    """Clear a writer's fencing token (once writes in flight end), take this holder's line out of
    the lock file, then release the flock (closing ``fd``)."""
    try:
        if token and _tokens.get(str(path), [""])[0] == token:  # not a refused second lock's (it set no token)
            del _tokens[str(path)]
            with contextlib.suppress(OSError):  # waits for this run's writes in flight (a cancel does not stop them)
                set_fence(path.with_suffix(".fence"), "", None)
        if me:
            _edit_holders(path, lambda lines: [line for line in lines if line != me])
    finally:
        os.close(fd)


def _live_holders(lock_file: Path) -> list[dict[str, Any]]:
    """The lock file's holders, less those known dead (a process of this host that no longer runs)."""
    holders = (_holder(line) for line in _read_lines(lock_file))
    return [h for h in holders if h is not None and _alive(h)]


def _busy_message(output: Path, lock_file: Path) -> str:
    holders = _live_holders(lock_file)
    writers = [h for h in holders if h.get("mode") != "read"]
    named = writers[:1] or holders

    def who(holder: dict[str, Any]) -> str:
        text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        if holder.get("since"):
            text += f", since {holder['since']}"
        if holder.get("command"):
            text += f": `{holder['command']}`"
        return text

    reading = holders and not writers
    doing = "read by another run that derives its output from it" if reading else "written by another run"
    holders_text = "; ".join(who(h) for h in named) if named else "pid ? on ?"
    return f"{output} is being {doing} ({holders_text}); wait for it to finish or stop it, or use another --workspace"


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
        _clean_up(functools.partial(shutil.rmtree, tmp, ignore_errors=True))
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
