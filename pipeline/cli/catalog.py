"""``agnsurvey ingest`` and ``label``: catalog files → ``WS/catalog/`` → ``WS/labels/``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.cli import options
from pipeline.cli.summary import print_summary
from pipeline.config import build
from storage.manifest import Manifest


def add_parsers(stages: argparse._SubParsersAction) -> None:
    """The catalog phase's stages: ``ingest`` and ``label``."""
    ingest = stages.add_parser(
        "ingest",
        help="catalog files -> WS/catalog/, a HATS catalog in sky order",
        description="Read NSA FITS (memory-mapped), Parquet, CSV or HATS catalogs into the canonical schema, "
        "drop rows with bad coordinates or duplicate ids, and write a HATS catalog (HEALPix-partitioned "
        "Parquet that lsdb.open_catalog reads) sorted on _healpix_29.",
    )
    ingest.add_argument(
        "catalogs", nargs="+", metavar="CATALOG",
        help="files, globs, Parquet directories or HATS catalog directories",
    )
    options.workspace_arg(ingest)
    options.catalog_args(ingest)
    ingest.add_argument(
        "--max-rows", type=int,
        help="most rows in one HEALPix partition of the HATS output (default 500000; smaller where needed to "
        "give every worker thread two partitions)",
    )
    ingest.add_argument("--chunk-rows", type=int, help="rows per read task (default 500000)")
    ingest.set_defaults(handler=_ingest)

    label = stages.add_parser(
        "label",
        help="WS/catalog/ -> WS/labels/ with BPT classes, labels and splits",
        description="Classify every galaxy on the [NII] BPT diagram. Labels: 0 star-forming, 1 AGN "
        "(the positive class), -1 composite (three-class scheme only).",
    )
    options.workspace_arg(label)
    options.label_args(label)
    label.set_defaults(handler=_label)


def _ingest_args(ns: argparse.Namespace, raw: dict, inputs: Sequence[str]) -> IngestArgs:
    return build(
        IngestArgs,
        raw,
        workspace=ns.workspace,
        inputs=tuple(inputs),
        columns=options.parse_columns(getattr(ns, "column", [])) or None,
        radius_column=getattr(ns, "radius_column", None),
        max_rows=getattr(ns, "max_rows", None),
        chunk_rows=getattr(ns, "chunk_rows", None),
        format=getattr(ns, "format", None),
        hdu=getattr(ns, "hdu", None),
        id_kind=getattr(ns, "id_kind", None),
    )


def _label_args_from(ns: argparse.Namespace, raw: dict) -> LabelArgs:
    return build(
        LabelArgs,
        raw,
        workspace=ns.workspace,
        scheme=ns.scheme,
        min_snr=ns.min_snr,
        split=ns.split,
        plots=ns.plots,
    )


def _ingest(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.catalog.ingest import ingest

    args = _ingest_args(ns, raw, ns.catalogs)
    return [print_summary("ingest", ingest(args, client=client()))]


def _label(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.catalog.label import label

    args = _label_args_from(ns, raw)
    return [print_summary("label", label(args, client=client()))]
