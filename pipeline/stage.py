"""What every stage does around its work: hold the writer's lock of its output, and turn Ctrl-C
into one clear :class:`~pipeline.errors.Interrupted` that says what was kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pipeline.errors import Interrupted, WorkspaceError
from storage.manifest import Manifest
from storage.workspace import Workspace, WorkspaceBusy

Report = Callable[[str, Manifest], Any]  # told of each stage's manifest as it finishes (the CLI prints it)


@contextmanager
def writing(ws: Workspace, output: str, stage: str, kept: str = "", reads: tuple[str, ...] = ()) -> Iterator[None]:
    """Run a stage's block as the only writer of ``WS/<output>``, reading the outputs ``reads``
    (nobody may replace them meanwhile).

    A second writer gets :class:`WorkspaceError` naming the first; Ctrl-C inside the block becomes
    :class:`Interrupted` saying ``kept`` (default: the output is as it was) unless the stage raised
    its own.
    """
    with ExitStack() as stack:
        stack.enter_context(locked(ws, output))
        for upstream in reads:
            stack.enter_context(locked(ws, upstream, shared=True))
        try:
            yield
        except KeyboardInterrupt as exc:
            if isinstance(exc, Interrupted):
                raise
            kept = kept or f"{ws.output_path(output)} is as it was (outputs are replaced only when complete)"
            raise Interrupted(f"{stage} interrupted; {kept}; re-run the same command to continue") from None


@contextmanager
def locked(ws: Workspace, output: str, shared: bool = False) -> Iterator[None]:
    """:meth:`Workspace.lock`, refusals as :class:`WorkspaceError`."""
    held = False
    try:
        with ws.lock(output, shared):
            held = True
            yield
    except WorkspaceBusy as exc:
        if held:  # refused inside the block, by another lock: not ours to translate
            raise
        raise WorkspaceError(str(exc)) from None
