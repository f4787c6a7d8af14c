"""Import Keras without TensorFlow's C++ start-up lines ("oneDNN custom operations are on", CPU
feature notes), which it prints to stderr before its own log level applies. Hidden only when
``TF_CPP_MIN_LOG_LEVEL`` asks for warnings and errors only (the CLI's default without --debug)."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def import_keras() -> ModuleType:
    """``import keras``, with stderr (file descriptor 2) sent to /dev/null while TensorFlow loads."""
    if "keras" in sys.modules or int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) < 2:
        import keras

        return keras
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras
