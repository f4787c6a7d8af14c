"""One line for any error a command ends with: ours say what to do; the operating system's name
the path and the fix (exit code 2); anything else is a bug (exit code 1)."""

from __future__ import annotations

import argparse
import errno
import os

from pipeline.errors import AgnSurveyError

NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def explain(exc: Exception, ns: argparse.Namespace) -> str:
    """One line for any error: ours say what to do; the OS's name the path and the fix."""
    if isinstance(exc, AgnSurveyError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; lower --image-size, --chunk-rows or --max-rows, or use fewer --threads per worker"
    if isinstance(exc, OSError):
        where = exc.filename or getattr(ns, "workspace", None) or "the workspace"
        if exc.errno == errno.EROFS:
            return f"{where} is on a read-only file system; choose a writable --workspace"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{where}: permission denied; check its permissions, or choose a writable --workspace"
        if exc.errno in NO_ROOM:
            return (
                f"no space left writing {where} ({os.strerror(exc.errno)}); free space there or choose a "
                "--workspace on another disk, then re-run: complete outputs were kept, the partial one removed"
            )
        return f"{where}: {exc.strerror or exc}"
    return f"unexpected {type(exc).__name__}: {exc} (re-run with --debug for the traceback, and please report it)"
