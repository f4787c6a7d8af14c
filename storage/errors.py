"""The errors a user can fix, at the bottom of the import graph: every layer may raise them.

:class:`AgnSurveyError` is the base the CLI catches (one line on stderr, exit code 2);
:class:`WorkspaceError` is storage's own (a workspace lacks, or holds a damaged, output of an
earlier stage). :mod:`pipeline.errors` re-exports both beside the other domains' errors.
"""


class AgnSurveyError(Exception):
    """Base class: the message says what went wrong and what to do next."""


class WorkspaceError(AgnSurveyError):
    """A workspace lacks the output of an earlier stage."""
