"""``agnsurvey fetch``: catalog rows → ``WS/cube.zarr``, one cutout each."""

from __future__ import annotations

import argparse

from pipeline.cli import options
from pipeline.cli.summary import print_summary
from pipeline.config import build
from pipeline.images.args import FetchArgs
from storage.manifest import Manifest


def add_parsers(stages: argparse._SubParsersAction) -> None:
    """The images phase's stage: ``fetch``."""
    fetch = stages.add_parser(
        "fetch",
        help="WS/catalog/ -> WS/cube.zarr: one validated, resized cutout per catalog row (the labelled ones first)",
        description="Fetch a Legacy Surveys cutout of every labelled galaxy, or with --rows all of every catalog "
        "row (pixscale = radius x 1.5 x 2 / size arcsec/pixel), validate it (JPEG of the requested shape; all-black = "
        "no coverage), resize it and store it in the Zarr cube, whose row i is the catalog's cube_row i (relabelling "
        "never fetches an image again). Resumable: a re-run requests only rows without a final status.",
    )
    options.workspace_arg(fetch)
    options.fetch_args(fetch)
    fetch.set_defaults(handler=_fetch)


def fetch_args_from(ns: argparse.Namespace, raw: dict, cutout_url: str | None = None) -> FetchArgs:
    return build(
        FetchArgs,
        raw,
        workspace=ns.workspace,
        cutout_url=cutout_url or ns.cutout_url or ("" if (ns.bricks or raw.get("fetch", {}).get("bricks")) else None),
        layer=ns.layer,
        size=ns.size,
        image_size=ns.image_size,
        concurrency=ns.concurrency,
        rate=ns.rate,
        retries=ns.retries,
        deadline_s=ns.deadline_s,
        restart=ns.restart,
        rows=getattr(ns, "rows", None),
        pixels=ns.pixels,
        bands=ns.bands,
        with_invvar=ns.with_invvar,
        bricks=ns.bricks,
    )


def _fetch(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.images.fetch import fetch

    args = fetch_args_from(ns, raw)
    return [print_summary("fetch", fetch(args, client=client()))]
