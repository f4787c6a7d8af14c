"""Ctrl-C and SIGTERM: one clear line, the processes the command started stopped, a second
interrupt leaves at once (exit codes 130 and 143)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_INTERRUPTED = 130

state: dict[str, Any] = {"signal": 0, "taken": False}


def on_signal(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM: a KeyboardInterrupt in the main thread, raised again every half second until
    the command has taken it (Python drops one raised inside a garbage collector's callback)."""
    state["signal"] = state["signal"] or signum
    timer = threading.Timer(0.5, lambda: state["taken"] or os.kill(os.getpid(), signum))
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def unraisable(unraisable: Any) -> None:
    """Python's report of an exception it had to drop, but not of our KeyboardInterrupt: dropped in
    a garbage collector's callback, it is raised again by :func:`on_signal`."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


@contextmanager
def children_stopped_if_interrupted() -> Iterator[None]:
    """On Ctrl-C, stop the processes started within the block that still run (the embedded
    cluster's workers and the forkserver they come from), before the outputs' temporary directories
    are removed and their locks released (:func:`storage.workspace.clean_up_last`)."""
    import psutil

    before = {child.pid for child in psutil.Process().children(recursive=True)}
    try:
        yield
    except KeyboardInterrupt:
        state["taken"] = True  # taken: no re-raise may cut the stopping short
        server = _forkserver_started_since(before)
        _stop_children(spare={*before, *([server] if server else [])})
        if server:
            _end_forkserver(server)
        raise


def _forkserver_started_since(before: Collection[int]) -> int | None:
    """The pid of multiprocessing's forkserver if it runs and was started after ``before`` was taken."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return pid if pid is not None and pid not in before else None


def _end_forkserver(pid: int) -> None:
    """Kill the forkserver, then let multiprocessing reap it and forget it, so that a later command
    in this process (a notebook, a test) starts a new one; killed behind its back, the next start
    fails with ChildProcessError."""
    from multiprocessing import forkserver

    try:
        os.kill(pid, signal.SIGKILL)
        forkserver._forkserver._stop()
    except (OSError, AttributeError):
        pass


def _stop_children(spare: Collection[int] = ()) -> None:
    """Stop the processes this one started that still run (workers of an embedded cluster), but not
    multiprocessing's resource tracker, which cleans up after them, nor the processes in ``spare``."""
    import psutil

    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in spare and "resource_tracker" not in " ".join(child.cmdline()):
                children.append(child)
                child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)


def leave_now(signum: int, frame: Any) -> None:
    _stop_children()
    print("agnsurvey: interrupted again; stopped at once (re-run the same command to continue)", file=sys.stderr)
    os._exit(EXIT_INTERRUPTED)
