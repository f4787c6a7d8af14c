"""``agnsurvey sky make`` and ``sky serve``: the offline sky (a catalog, and its cutout server)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import options
from pipeline.cli.summary import print_summary
from pipeline.config import build
from pipeline.synthetic.args import BrickArgs, SkyArgs
from storage.manifest import Manifest


def add_parsers(stages: argparse._SubParsersAction) -> None:
    """The ``sky`` stage and its commands; ``sky serve`` takes no cluster options (it runs no Dask graph)."""
    sky = stages.add_parser("sky", help="the offline sky (demo, tests, benchmarks)")
    sky_cmds = sky.add_subparsers(dest="sky_command", required=True, metavar="COMMAND")
    make = sky_cmds.add_parser("make", help="write an NSA-like catalog as FITS (NSA v0_1_2 layout) and Parquet")
    make.add_argument("--n", type=int, help="number of galaxies (default 20000)")
    make.add_argument("--seed", type=int, help="random seed; same seed, same catalog (default 0)")
    make.add_argument("--out", type=Path, required=True, help="output directory")
    make.add_argument("--partition-rows", type=int, help="rows generated per task (default 250000)")
    make.add_argument("--layout", choices=("v0", "v1"), help="v0 (default): NSA v0_1_2 FITS + Parquet, with "
                      "emission lines; v1: nsa_v1_sky.fits, NSA v1_0_1 names, no lines (to score)")  # fmt: skip
    make.set_defaults(handler=_sky_make)

    bricks = sky_cmds.add_parser(
        "bricks",
        help="write a Legacy Surveys brick mirror (survey-bricks + coadd images) of a catalog for a region",
        description="Writes ROOT/survey-bricks.fits.gz (every brick of the sky) and, for the bricks that overlap the "
        "region and the footprint, ROOT/coadd/<AAA>/<brick>/legacysurvey-<brick>-{image,invvar}-<band>.fits.fz "
        "(3600x3600, 0.262\"/pixel, nanomaggies, tile-compressed), with the catalog's galaxies drawn as the "
        "cutout server draws them. RA min > RA max: the region wraps through RA 0.",
    )
    bricks.add_argument("--out", type=Path, required=True, help="root of the mirror")
    bricks.add_argument("--catalog", required=True, nargs="+", help="catalog file(s), e.g. the sky's nsa_sky.fits")
    for key, what in (("ra-min", "RA"), ("ra-max", "RA"), ("dec-min", "Dec"), ("dec-max", "Dec")):
        bricks.add_argument(f"--{key}", type=float, help=f"region {what} bound, degrees (default: the whole sky)")
    bricks.add_argument("--bands", help="bands to write, of g, r, z (default grz)")
    bricks.add_argument("--no-invvar", action="store_false", dest="invvar", default=None,
                        help="write the images only, no inverse-variance maps")  # fmt: skip
    bricks.set_defaults(handler=_sky_bricks)

    serve = sky_cmds.add_parser(
        "serve",
        help="serve cutouts of a catalog on 127.0.0.1, with the Legacy Surveys viewer's URL API",
        description="An offline twin of https://www.legacysurvey.org/viewer/cutout.jpg: GET "
        "/viewer/cutout.jpg?ra=&dec=&size=&pixscale=&layer= renders the catalog galaxy there as JPEG (empty sky "
        "where there is none; all black outside the footprint). Faults can be injected for testing clients.",
    )
    serve.add_argument("--catalog", required=True, nargs="+", help="catalog file(s), e.g. the sky's nsa_sky.fits")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 0: any free port, printed)")
    serve.add_argument("--tolerance", type=float, dest="tolerance_arcsec", help="match radius, arcsec (default 3)")
    serve.add_argument("--seed", type=int, help="seed of the fault decisions (default 0)")
    serve.add_argument("--workers", type=int, dest="render_workers", help="render threads/processes")
    serve.add_argument("--processes", action="store_const", const="process", dest="executor",
                       help="render in processes (throughput) instead of threads")  # fmt: skip
    serve.add_argument("--url-file", type=Path, help="write the cutout URL to this file once listening")
    faults = serve.add_argument_group("fault injection (all off by default)")
    faults.add_argument("--latency", type=float, dest="latency_s", help="seconds added to every answer")
    faults.add_argument("--jitter", type=float, dest="jitter_s", help="up to this many more seconds, at random")
    faults.add_argument("--error-rate", type=float, help="fraction answered 500 or 503")
    faults.add_argument("--throttle-rate", type=float, help="requests/s above which 429 + Retry-After is answered")
    faults.add_argument("--throttle-burst", type=int, help="requests allowed in a burst (default: the rate)")
    faults.add_argument("--retry-after", type=float, dest="retry_after_s", help="Retry-After seconds (default 1)")
    faults.add_argument("--truncate-rate", type=float, help="fraction of JPEG bodies cut short")
    faults.add_argument("--truncate-mode", choices=["body", "close"], help="short body, or connection closed early")
    faults.add_argument("--hang-rate", type=float, help="fraction of connections that hang")
    faults.add_argument("--hang-s", type=float, help="how long a hung connection is held (default 300)")
    faults.add_argument("--max-concurrent", type=int, help="more concurrent requests than this get 503")
    serve.set_defaults(handler=_sky_serve, needs_cluster=False, cluster_options=False)


def _sky_make(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.synthetic.catalog import make_sky

    args = build(SkyArgs, raw, out=ns.out, n=ns.n, seed=ns.seed, partition_rows=ns.partition_rows,
                 layout=ns.layout)  # fmt: skip
    return [print_summary("sky make", make_sky(args, client=client()))]


def _sky_bricks(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.synthetic.bricks import write_bricks

    args = build(BrickArgs, raw, out=ns.out, catalog=tuple(ns.catalog), ra_min=ns.ra_min, ra_max=ns.ra_max,
                 dec_min=ns.dec_min, dec_max=ns.dec_max, bands=ns.bands, invvar=ns.invvar)  # fmt: skip
    return [print_summary("sky bricks", write_bricks(args, client=client()))]


def _sky_serve(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.synthetic.server import serve
    from pipeline.synthetic.server_config import build_server_config

    keys = ("host", "port", "tolerance_arcsec", "seed", "executor", "latency_s", "jitter_s", "error_rate",
            "throttle_rate", "throttle_burst", "retry_after_s", "truncate_rate", "truncate_mode", "hang_rate",
            "hang_s", "max_concurrent")  # fmt: skip
    config = build_server_config(
        raw.get("serve"),
        catalog=tuple(ns.catalog),
        workers=ns.render_workers,
        **{key: getattr(ns, key) for key in keys},
    )
    serve(config, url_file=ns.url_file)
    return []
