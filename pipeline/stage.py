"""What every stage shares: it holds the writer's lock of its output and turns Ctrl-C into one clear
:class:`~pipeline.errors.Interrupted` that says what was kept (:func:`writing`); and it tells
``agnsurvey run`` when its output is current and how to run it (:class:`Step`), so the run asks
the stages instead of knowing them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    if reads and not Path(ws.root).is_dir():  # before a lock would make the directory
        raise WorkspaceError(
            f"{ws.root} does not exist: {stage} reads its {', '.join(reads)}; run `agnsurvey ingest CATALOG "
            f"--workspace {ws.root}` first (or `agnsurvey run`), or pass the --workspace you meant"
        )
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


class RunContext(Protocol):
    """What a stage's :class:`Step` may ask of the ``agnsurvey run`` it is part of."""

    workspace: Workspace
    client: Any  # the cluster's Dask client (None: in this process)
    upstream: str  # a token of the stage before: its fingerprint and when its output was made
    recorded: Mapping[str, dict]  # per stage, what run.json holds of its last complete run

    def report(self, stage: str, manifest: Manifest) -> None:
        """Tell the user (the CLI prints a summary) that ``stage`` finished."""

    def cutout_url(self) -> str:
        """The run's cutout service: the configured one, or an offline sky server started for it."""


@dataclass(frozen=True)
class Step:
    """How ``agnsurvey run`` drives one stage, as the stage's module defines it (its ``STEP``).

    ``settings(args, run)`` → (settings, upstream tokens): what the stage's output depends on; the
    run fingerprints both, and a stage whose fingerprint and manifest match its last complete run
    is skipped if ``complete(args, run, made)`` (``made``: the manifest the stage wrote) says its
    output is whole. ``execute(args, run, before, fingerprint, tokens)`` runs it and returns its
    manifest (``before``: run.json's entry of its last complete run; ``{}`` when there is none or
    an attempt with these settings was cut short). ``manifest(args)`` names the manifest it writes
    in ``WS/manifests/`` (default: ``name``); ``title`` is its name in reports; ``result(m)`` is one
    phrase of its manifest ``m`` for the run's table, and ``images`` says that ``m`` counts images.
    ``args`` is the stage's own argument object (:class:`~pipeline.catalog.args.IngestArgs`, ...).
    """

    name: str
    settings: Callable[[Any, RunContext], tuple[dict, list]]
    complete: Callable[[Any, RunContext, dict], bool]
    execute: Callable[[Any, RunContext, dict, str, list], Manifest]
    manifest: Callable[[Any], str] | None = None
    title: str = ""
    result: Callable[[dict], str] | None = None
    images: bool = False

    def manifest_name(self, args: Any) -> str:
        return self.manifest(args) if self.manifest else self.name

    def describe(self, manifest: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
        """(result phrase, images ok, rows out) of one of this stage's manifests, for the run's table."""
        images = manifest.get("extra", {}).get("status", {}).get("ok") if self.images else None
        rows = manifest.get("rows_out")
        return (self.result(manifest) if self.result else ""), images, rows if isinstance(rows, int) else None
