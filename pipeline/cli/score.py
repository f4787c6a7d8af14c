"""``agnsurvey score``: a model + any catalog → ``WS/scores/``."""

from __future__ import annotations

import argparse

from pipeline.cli import options
from pipeline.cli.images import fetch_args_from
from pipeline.cli.summary import print_summary
from pipeline.config import build
from pipeline.errors import ConfigError
from pipeline.score.args import ScoreArgs
from storage.manifest import Manifest


def add_parsers(stages: argparse._SubParsersAction) -> None:
    """The scoring phase's stage: ``score``."""
    score = stages.add_parser(
        "score",
        help="model + any catalog -> WS/scores/: P(AGN) and a label per galaxy (no spectra needed)",
        description="Score every row of catalog files (read and column-mapped as ingest does; none given: the "
        "workspace's own catalog) with a trained model. Pixels come from Legacy Surveys cutouts fetched into "
        "WS/scoring/cube.zarr (every row, as `fetch --rows all`: same politeness, resumable; scoring streams behind "
        "the fetch) or, with --images COLUMN, from local image files. Labels use the threshold evaluate stored "
        "beside the model unless --threshold is given. Output: WS/scores/, a HATS catalog that lsdb.open_catalog "
        "reads (objid, ra, dec, p_agn, label, status; with --images: WS/scores/part-*.parquet); a re-run skips "
        "complete parts.",
    )
    score.add_argument("catalogs", nargs="*", metavar="CATALOG", help="files, globs, Parquet directories or HATS "
                       "catalogs (default: the workspace's own catalog)")  # fmt: skip
    options.workspace_arg(score)
    score.add_argument("--model", help="the model directory train wrote (WS/models/NAME), its model.keras, or NAME")
    score.add_argument("--images", metavar="COLUMN", help="score local image files named in this catalog column "
                       "(JPEG/PNG, any size; relative to the catalog file) instead of fetching cutouts")  # fmt: skip
    score.add_argument("--threshold", type=float, help="P(AGN) at or above which label = 1 (default: the model's "
                       "threshold.json from evaluate)")  # fmt: skip
    score.add_argument("--batch-size", type=int, help="images per prediction (default 1024 on a GPU, 256 on a CPU)")
    score.add_argument("--tta", action="store_true", default=None, help="average the 8 flips/rotations (8x slower)")
    score.add_argument("--restart", action="store_true", default=None,
                       help="discard earlier scores (needed with another model, threshold or catalog)")  # fmt: skip
    options.catalog_args(score)
    options.fetch_args(score, url_required=False, restart=False)
    score.set_defaults(handler=_score)


CUTOUT_OPTIONS = ("layer", "size", "image_size", "pixels", "bands", "with_invvar")
"""Options that change what a cutout is: meaningless (and refused) when score fetches nothing."""


def _score_args(ns: argparse.Namespace, raw: dict) -> ScoreArgs:
    """The score stage's arguments; its cutouts are fetched with the [fetch] settings and flags."""
    fetch_table = raw.get("fetch", {})
    url = ns.cutout_url or fetch_table.get("cutout_url") or ns.bricks or fetch_table.get("bricks")
    if not url:
        given = [f"--{k.replace('_', '-')}" for k in CUTOUT_OPTIONS if getattr(ns, k, None) is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} describe cutouts to fetch, but no --cutout-url or --bricks says where from: score "
                f"reads {ns.workspace}'s cube as it was fetched; drop {'them' if len(given) > 1 else 'it'}, or give "
                f"--cutout-url/--bricks to fetch with {'them' if len(given) > 1 else 'it'} (new cutouts: "
                f"`agnsurvey fetch --workspace {ns.workspace} --restart` with the same options)"
            )
    fetch_args = fetch_args_from(ns, raw) if url else None
    score_table = raw.get("score", {})
    ingest_table = raw.get("ingest", {})
    wanted = ("objid", "ra", "dec", "radius_arcsec")
    positions = {k: v for k, v in ingest_table.get("columns", {}).items() if k in wanted}
    columns = {**positions, **score_table.get("columns", {})}  # not the line fluxes: scoring needs none
    if "radius_column" in ingest_table:  # cutouts framed as the training ones were
        score_table = {"radius_column": ingest_table["radius_column"], **score_table}
    return build(
        ScoreArgs, {**raw, "score": {**score_table, "columns": columns}}, workspace=ns.workspace,
        model=ns.model, inputs=tuple(ns.catalogs) or None, columns=options.parse_columns(ns.column) or None,
        radius_column=ns.radius_column, format=ns.format, hdu=ns.hdu, id_kind=ns.id_kind, images=ns.images,
        threshold=ns.threshold, batch_size=ns.batch_size, tta=ns.tta, restart=ns.restart, fetch=fetch_args,
    )  # fmt: skip


def _score(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.score.score import score

    args = _score_args(ns, raw)
    return [print_summary("score", score(args, client=client(), report=print_summary))]
