"""Fencing tokens: a write made by a task of a stage run lands only while that run still holds the
writer's lock of its output.

A task already running on a remote worker is not stopped by ``client.cancel``: it runs on and may
write after its run failed, was interrupted, or was replaced by another run. So each writer's lock
(:meth:`storage.workspace.Workspace.lock`) puts a token of its own in ``WS/.locks/<output>.fence``
and clears it on release; a task writes under :meth:`Fence.hold`, which refuses a token that is no
longer there. Holds share an ``flock`` of the fence file and setting or clearing a token takes it
exclusively, so a run that sets or clears its token waits for writes in flight, and none starts
meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
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
        and no run takes or gives up the lock until it ends."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise self._stale("its lock file is gone") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
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


def set_fence(path: Path, token: str, wait_s: float = 60.0) -> bool:
    """Make ``token`` the current one ("" clears it) once no write holds the fence; False when writes
    still held it after ``wait_s`` seconds (nothing changed then)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, token.encode(), 0)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        return True
    finally:
        os.close(fd)
