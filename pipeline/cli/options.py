"""Option groups shared by several stages' parsers (cluster, workspace, catalog reading, fetching,
labelling), and the parsing of their values."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.catalog.schema import CANONICAL_COLUMNS, ID_KINDS, SCHEMES
from pipeline.errors import ConfigError
from pipeline.images.args import FETCH_ROWS, PIXELS

ClientFactory = Callable[[], Any]  # a handler's client(): the cluster's client, connected on first use


def cluster_args(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--cluster", default=default,
        help="where to run: local (default: a LocalCluster sized to this machine), local:N (N worker processes), "
        "local-cuda (one worker per GPU), slurm ([cluster.slurm] in --config), tcp://host:8786, or a scheduler file",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, dest="n_workers", default=default,
                        help="worker processes of a local cluster")  # fmt: skip
    parser.add_argument("--threads", type=int, dest="threads_per_worker", default=default,
                        help="threads per local worker")  # fmt: skip


def leaf_parsers(stages: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every stage's parser, and for a stage with commands (sky) every command's."""
    leaves = []
    for sub in stages.choices.values():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        leaves += leaf_parsers(nested[0]) if nested else [sub]
    return leaves


def stage_list(stages: argparse._SubParsersAction) -> str:
    """The epilog's list of every stage (and sky command), taken from the parsers themselves."""
    lines = []
    for action in stages._choices_actions:
        sub = stages.choices[action.dest]
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            lines += [(f"{action.dest} {c.dest}", c.help) for c in nested[0]._choices_actions]
        else:
            lines.append((action.dest, action.help))
    width = max(len(name) for name, _ in lines)
    body = "\n".join(f"  {name:<{width}}  {text}" for name, text in lines)
    return f"stages (each writes into the workspace WS and a JSON manifest in WS/manifests/):\n{body}\n"


def catalog_args(parser: argparse.ArgumentParser) -> None:
    """How a catalog file is read: column map, radius column, format, FITS HDU, kind of ids."""
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="CANONICAL=SOURCE",
        help="map a source column to a canonical one (repeatable), e.g. --column ha_flux=h_alpha_flux; "
        f"canonical names: {', '.join(CANONICAL_COLUMNS)}",
    )
    parser.add_argument(
        "--radius-column",
        help="galaxy radius in arcsec for the cutout scale (default PETROTH90: 3 radii frame the whole galaxy)",
    )
    parser.add_argument("--format", choices=["auto", "fits", "parquet", "csv"], help="input format (default auto)")
    parser.add_argument("--hdu", type=int, help="FITS extension holding the table (default: the first table, HDU 1)")
    parser.add_argument(
        "--id-kind",
        choices=ID_KINDS,
        help="string: keep ids exactly as text (source_id; objid = their stable hash), e.g. for unsigned 64-bit "
        "ids above 2^63-1; int: every id must be an integer; auto (default): by the column's type",
    )


def workspace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", "-w", type=Path, help="the run's directory (or set workspace in --config)")


def fetch_args(parser: argparse.ArgumentParser, url_required: bool = True, restart: bool = True) -> None:
    parser.add_argument(
        "--cutout-url",
        help="the viewer's cutout endpoint, e.g. https://www.legacysurvey.org/viewer/cutout.jpg or the offline "
        "sky's http://127.0.0.1:PORT/viewer/cutout.jpg" + ("" if url_required else " (default: an offline sky server)"),
    )
    parser.add_argument("--layer", help="imaging layer (default ls-dr10)")
    parser.add_argument("--size", type=int, help="cutout pixels requested (default 250, at most 3000)")
    parser.add_argument("--image-size", type=int, help="pixels stored per side (default 128)")
    parser.add_argument("--concurrency", type=int, help="requests in flight over all workers (default 32)")
    parser.add_argument("--rate", type=float, help="requests per second over all workers (default 20; be polite)")
    parser.add_argument("--retries", type=int, help="retries per image on 5xx, timeouts, corrupt bodies (default 5)")
    parser.add_argument(
        "--deadline",
        type=float,
        dest="deadline_s",
        help="seconds one image may take, retries included (default 300); a service asking (Retry-After) "
        "for a longer wait ends the run, rows left pending",
    )
    pixels = parser.add_argument_group("pixels (what the cube stores, and where it comes from)")
    pixels.add_argument("--pixels", choices=PIXELS, help="rgb (default): uint8 colour, the viewer's JPEG or the "
                        "survey's g,r,z mapping of brick flux; flux: float32 nanomaggies per output pixel, one "
                        "channel per band (the viewer's cutout.fits, or the bricks)")  # fmt: skip
    pixels.add_argument("--bands", help="bands of flux pixels, of g, r, z, in channel order (default grz)")
    pixels.add_argument("--with-invvar", action="store_true", default=None,
                        help="also store each flux pixel's inverse variance (with --bricks)")  # fmt: skip
    pixels.add_argument("--bricks", metavar="ROOT", help="cut cutouts from the survey's own coadd bricks under ROOT "
                        "(a path or fsspec URL laid out as a Legacy Surveys release: survey-bricks.fits.gz, "
                        "coadd/AAA/BRICK/legacysurvey-BRICK-image-BAND.fits.fz) instead of asking the "
                        "viewer")  # fmt: skip
    if restart:
        parser.add_argument("--restart", action="store_true", default=None, help="discard an existing cube")
    if url_required:
        parser.add_argument(
            "--rows",
            choices=FETCH_ROWS,
            help="catalog rows to fetch: labelled (default when WS/labels/ exists), all (default otherwise: "
            "scoring needs no labels); the others stay pending",
        )


def label_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        help="paper (default): SF iff below Kauffmann 2003 and x < -0.1; kewley2001: the maximum-starburst "
        "line; three-class: SF / composite / AGN",
    )
    parser.add_argument("--min-snr", type=float, help="require flux/err >= X in all four lines")
    parser.add_argument("--split", type=fractions, help="train,val,test fractions (default 0.75,0.15,0.10)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="skip BPT plots")


def fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give three numbers like 0.75,0.15,0.10") from None


def parse_columns(pairs: Sequence[str]) -> dict[str, str]:
    """``["ha_flux=H_ALPHA", ...]`` → ``{"ha_flux": "H_ALPHA"}``, with errors naming the bad pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        canonical, sep, source = pair.partition("=")
        if not sep or not canonical.strip() or not source.strip():
            raise ConfigError(f"--column {pair!r}: write CANONICAL=SOURCE, e.g. --column ha_flux=h_alpha_flux")
        canonical, source = canonical.strip(), source.strip()
        if canonical in out:
            raise ConfigError(
                f"--column maps {canonical} twice ({canonical}={out[canonical]} and {canonical}={source}); "
                "give one source column per canonical column"
            )
        out[canonical] = source
    return out
