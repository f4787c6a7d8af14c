"""What every stage does around its work: hold the writer's lock of its output, and turn Ctrl-C
into one clear :class:`~pipeline.errors.Interrupted` that says what was kept."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pipeline.errors import Interrupted, WorkspaceError
from storage.workspace import Workspace, WorkspaceBusy


@contextmanager
def writing(ws: Workspace, output: str, stage: str, kept: str = "") -> Iterator[None]:
    """Run a stage's block as the only writer of ``WS/<output>``.

    A second writer gets :class:`WorkspaceError` naming the first; Ctrl-C inside the block becomes
    :class:`Interrupted` saying ``kept`` (default: the output is as it was) unless the stage raised
    its own.
    """
    with ExitStack() as stack:
        try:
            stack.enter_context(ws.lock(output))
        except WorkspaceBusy as exc:
            raise WorkspaceError(str(exc)) from None
        try:
            yield
        except KeyboardInterrupt as exc:
            if isinstance(exc, Interrupted):
                raise
            kept = kept or f"{ws.root / output} is as it was (outputs are replaced only when complete)"
            raise Interrupted(f"{stage} interrupted; {kept}; re-run the same command to continue") from None


def check_run_inputs(ws: Workspace, inputs: dict[str, Any], restart: bool) -> None:
    """Refuse to run on a workspace built from other inputs (a mismatched workspace), unless
    ``restart``: then its catalog, labels and cube are discarded first. Records ``inputs``.

    ``inputs`` is what the run's outputs depend on: the offline sky's n and seed, or the catalog
    files, and the labelling settings (the cube's rows are the labelled galaxies).
    """
    before = (ws.read_manifest("run") or {}).get("inputs")
    built = [p for p in (ws.catalog, ws.labels, ws.cube) if p.exists()]
    if built and before != inputs and not restart:
        origin = _describe_inputs(before) if before else "the stage commands (ingest, label, fetch)"
        raise WorkspaceError(
            f"{ws.root} was built from {origin}; this run asks for {_describe_inputs(inputs)}, which would leave "
            "its catalog, labels and cube mismatched. Run with the workspace's settings, use another --workspace, "
            "or pass --restart to rebuild it (its cutouts are then fetched again)"
        )
    if restart and ws.cube.exists():
        with writing(ws, "cube", "run"):
            trash = ws.root / f".cube.zarr.discarded-{uuid.uuid4().hex[:8]}"
            os.replace(ws.cube, trash)  # one rename: the cube is whole or gone, never half deleted
            (ws.root / "cube_failures.parquet").unlink(missing_ok=True)
            shutil.rmtree(trash, ignore_errors=True)
    ws.write_manifest("run", {"inputs": inputs})


def _describe_inputs(inputs: dict[str, Any]) -> str:
    sky = inputs.get("sky")
    source = f"the offline sky --n {sky['n']} --seed {sky['seed']}" if sky else ", ".join(inputs.get("catalog", []))
    label = inputs.get("label", {})
    cut = f", --min-snr {label['min_snr']}" if label.get("min_snr") is not None else ""
    return f"{source} (--scheme {label.get('scheme')}{cut}, --split {','.join(map(str, label.get('split', [])))})"
