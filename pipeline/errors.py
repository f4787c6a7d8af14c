"""One exception type per domain; the CLI catches :class:`AgnSurveyError` and prints the message."""


class AgnSurveyError(Exception):
    """Base class: the message says what went wrong and what to do next."""


class ConfigError(AgnSurveyError):
    """A configuration key or command-line value is invalid."""


class CatalogError(AgnSurveyError):
    """An input catalog cannot be read, or lacks a column a stage needs."""


class WorkspaceError(AgnSurveyError):
    """A workspace lacks the output of an earlier stage."""


class FetchError(AgnSurveyError):
    """The cutout service cannot be used (bad URL, unreachable) or a fetch cannot proceed."""
