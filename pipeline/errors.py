"""One exception type per domain; the CLI catches :class:`AgnSurveyError` and prints the message.

The base and :class:`WorkspaceError` are defined in :mod:`storage.errors` (storage raises them and
never imports ``pipeline``); they are re-exported here, so every error is imported from one place.
"""

from collections.abc import Callable

from storage.errors import AgnSurveyError, WorkspaceError

__all__ = [
    "AgnSurveyError", "CatalogError", "ConfigError", "DataError", "FetchError", "Interrupted", "ScoreError",
    "TrainingError", "WorkspaceError",
]  # fmt: skip


class ConfigError(AgnSurveyError):
    """A configuration key or command-line value is invalid."""


class CatalogError(AgnSurveyError):
    """An input catalog cannot be read, or lacks a column a stage needs."""


class FetchError(AgnSurveyError):
    """The cutout service cannot be used (bad URL, unreachable) or a fetch cannot proceed."""


class DataError(AgnSurveyError):
    """The training or evaluation data cannot be used (too few rows of a class, impossible batch)."""


class TrainingError(AgnSurveyError):
    """A model cannot be trained or evaluated as asked (devices, model directory, arguments)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a stage; the message says what was kept and how to continue.

    A ``KeyboardInterrupt`` (so a notebook still sees an interrupt), raised by stages in place of
    the bare one so the CLI can print one line instead of a traceback. The message may be a
    function, called when it is shown: tasks already running on workers finish their shards until
    the cluster is closed, so what was kept is known only then.
    """

    def __init__(self, message: str | Callable[[], str]):
        super().__init__(message if isinstance(message, str) else "")
        self.message = message

    def __str__(self) -> str:
        return self.message if isinstance(self.message, str) else self.message()


class ScoreError(AgnSurveyError):
    """A catalog cannot be scored as asked (model, threshold, images, earlier scores)."""
