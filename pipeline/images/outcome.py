"""What became of one cutout, whatever its pixel source (viewer JPEG, viewer FITS, survey bricks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OK, NO_COVERAGE, FAILED, PENDING = "ok", "no_coverage", "failed", "pending"


@dataclass
class Outcome:
    """One cutout's status, its pixels when ok (as stored: uint8 RGB or float32 nanomaggies per
    output pixel, row 0 north, column 0 east), its inverse variance when asked for, why it failed,
    how many tries."""

    status: str
    image: np.ndarray | None = None
    reason: str = ""
    attempts: int = 0
    http_status: int | None = None
    retry: bool = False  # a failure another attempt may cure
    backoff: bool = False  # wait (exponential, jittered) before that attempt
    kind: str = ""  # the failure's kind, for the give-up summary ("HTTP 503", "timeout", ...)
    invvar: np.ndarray | None = None  # 1/nanomaggies² per output pixel (flux with invvar only)
