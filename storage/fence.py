"""Fencing tokens: a write made by a task of a stage run lands only while that run still holds the
writer's lock of its output.

A task already running on a remote worker is not stopped by ``client.cancel``: it runs on and may
write after its run failed, was interrupted, or was replaced by another run. So each writer's lock
(:meth:`storage.workspace.Workspace.lock`) puts a token of its own in ``WS/.locks/<output>.fence``
and clears it on release; a task writes under :meth:`Fence.hold`, which refuses a token that is no
longer there. A new token replaces the file (a rename), then waits until the writes that hold the
old file (a shared ``flock``) end; a write that opened the old file after that finds it replaced,
and writes that start later read the new token, so nothing lands after the change and no stream
of new writes can hold it off.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("agnsurvey")


class StaleWrite(RuntimeError):
    """A task's run no longer holds the writer's lock of the output the task was about to write."""


@dataclass(frozen=True)
class Fence:
    """What a task carries to write one output: the fence file, its run's token, the output's path
    (for messages). Picklable: it travels to the workers with the task."""

    path: str
    token: str
    output: str

    @contextmanager
    def hold(self) -> Iterator[None]:
        """The block runs only while this token is the output's current one (else :class:`StaleWrite`),
        and no token replaces it until the block ends."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise self._stale("its lock file is gone") from None
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _same_file(fd, self.path):
                break
            os.close(fd)  # replaced since it was opened: read the current one
        try:
            current = os.pread(fd, 256, 0).decode(errors="replace").strip()
            if current != self.token:
                raise self._stale("another run holds it now" if current else "the run has ended")
            yield
        finally:
            os.close(fd)

    def _stale(self, why: str) -> StaleWrite:
        message = (
            f"not writing {self.output}: the run this task belongs to no longer holds its writer's lock ({why}); "
            "the task was cancelled and its result is dropped"
        )
        log.warning(message)
        return StaleWrite(message)


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def current_token(path: Path) -> str:
    """The token in a fence file ("" when none or no file)."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def set_fence(path: Path, token: str, wait_s: float | None = 60.0) -> bool:
    """Make ``token`` the current one ("" clears it), then wait for the writes that hold the old one
    to end: False when some still did after ``wait_s`` seconds (None: wait as long as they take,
    with a warning each minute). Tasks checking the old token are refused from the moment it is
    replaced."""
    try:
        old = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        old = -1
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(token)
        os.replace(tmp, path)
        if old < 0:
            return True
        started = warned = time.monotonic()
        while True:
            try:
                fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                now = time.monotonic()
                if wait_s is not None and now - started >= wait_s:
                    return False
                if wait_s is None and now - warned >= 60:
                    warned = now
                    log.warning(f"waiting for a task to finish writing before {path.stem} is released "
                                f"({now - started:.0f} s so far)")  # fmt: skip
                time.sleep(0.05)
    finally:
        if old >= 0:
            os.close(old)
