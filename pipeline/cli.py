"""``agnsurvey <stage>``: parse arguments, build one validated config, call one stage function.

Exit codes: 0 done; 1 an unexpected failure (a bug: ``--debug`` shows the traceback); 2 an error
(bad input, option, workspace or service: one line on stderr that says what to do); 3 incomplete
(what could be done was written, some rows failed or are left pending: re-run the same command to
continue); 130 interrupted (Ctrl-C; 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pipeline import config as cfg
from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.schema import CANONICAL_COLUMNS, ID_KINDS, SCHEMES
from pipeline.errors import AgnSurveyError, ConfigError
from pipeline.images.args import FETCH_ROWS, FetchArgs
from pipeline.learn.args import MODEL_NAMES, EvaluateArgs, TrainArgs
from pipeline.score.args import ScoreArgs
from pipeline.synthetic.args import SkyArgs
from storage.manifest import Manifest

EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 2, 3, 130

EXAMPLES = """\
exit codes: 0 done · 1 unexpected failure (a bug; --debug shows it) · 2 error (one line on stderr says why)
            · 3 incomplete (rows failed or left pending: re-run the same command to continue) · 130 interrupted

examples:
  agnsurvey run --workspace ws
  agnsurvey ingest nsa_v0_1_2.fits --workspace ws
  agnsurvey ingest NSA_ECO.csv --workspace eco --column objid=resname --column ra=radeg \\
      --column dec=dedeg --column ha_flux=h_alpha_flux --column nii_flux=nii_6584_flux ...
  agnsurvey label --workspace ws --scheme three-class --min-snr 3
  agnsurvey train --workspace ws --epochs 10          # re-run to resume; --epochs 20 continues
  agnsurvey evaluate --workspace ws --threshold-policy purity:0.8 --tta
  agnsurvey --cluster tcp://scheduler:8786 ingest 'nsa/*.fits' --workspace /shared/ws
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agnsurvey",
        description="Tell AGN hosts from star-forming galaxies by their images, at survey scale, on Dask.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML config file (tables [cluster], [ingest], [label], ...)")
    _cluster_args(parser, None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

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
    serve.set_defaults(handler=_sky_serve, needs_cluster=False)

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
    _workspace_arg(ingest)
    _catalog_args(ingest)
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
    _workspace_arg(label)
    _label_args(label)
    label.set_defaults(handler=_label)

    fetch = stages.add_parser(
        "fetch",
        help="WS/catalog/ -> WS/cube.zarr: one validated, resized cutout per catalog row (the labelled ones first)",
        description="Fetch a Legacy Surveys cutout of every labelled galaxy, or with --rows all of every catalog "
        "row (pixscale = radius x 1.5 x 2 / size arcsec/pixel), validate it (JPEG of the requested shape; all-black = "
        "no coverage), resize it and store it in the Zarr cube, whose row i is the catalog's cube_row i (relabelling "
        "never fetches an image again). Resumable: a re-run requests only rows without a final status.",
    )
    _workspace_arg(fetch)
    _fetch_args(fetch)
    fetch.set_defaults(handler=_fetch)

    train = stages.add_parser(
        "train",
        help="WS/cube.zarr + WS/labels/ -> WS/models/NAME/: train a CNN, a checkpoint per epoch (resumable)",
        description="Train a model on the train split (ok cutouts, label 0 SF / 1 AGN), validating on the val split "
        "after every epoch (loss, accuracy, ROC AUC). Adam, binary cross-entropy. Re-running the same command resumes "
        "after the last finished epoch; a larger --epochs continues. In this process by default (all visible GPUs, "
        "else the CPU); with --cluster or --workers, one training process per Dask worker (data-parallel, JAX).",
    )
    _workspace_arg(train)
    train.add_argument("--model", choices=MODEL_NAMES, help="architecture: paper (default, the paper's CNN) or "
                       "resnet18 (the stronger baseline)")  # fmt: skip
    train.add_argument("--name", help="model directory WS/models/NAME (default: the model's name)")
    train.add_argument("--epochs", type=int, help="epochs in all (default 10); more than done continues training")
    train.add_argument("--batch-size", type=int, help="images per step over all devices (default 64)")
    train.add_argument("--lr", type=float, help="Adam learning rate (default 0.001)")
    train.add_argument("--precision", choices=("float32", "mixed_bfloat16"), help="compute precision (default float32)")
    train.add_argument("--devices", type=int, help="devices of this node (default: every visible GPU, else 1 CPU)")
    train.add_argument("--accelerator", choices=("auto", "gpu", "cpu"),
                       help="auto (default): GPUs if any; gpu: fail without one; cpu: --devices logical CPU devices")
    train.add_argument("--composites", choices=("exclude", "agn"), help="three-class labels: drop composites "
                       "(default) or count them as AGN")  # fmt: skip
    train.add_argument("--class-weight", choices=("none", "balanced"), help="balanced: both classes weigh the same")
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="no random flips / 90-degree rotations of training images")  # fmt: skip
    train.add_argument("--shuffle-buffer", type=int, help="images mixed in memory (default 4096, ~49 KB each)")
    train.add_argument("--seed", type=int, help="initial weights, data order and augmentation (default 0)")
    train.add_argument("--restart", action="store_true", default=None, help="discard the model directory, train anew")
    train.set_defaults(handler=_train, needs_cluster=False)

    evaluate = stages.add_parser(
        "evaluate",
        help="WS/models/NAME/ -> WS/reports/: threshold on val, metrics on test, plots, report.md",
        description="Choose the threshold on the validation split (never the test split), store it in "
        "WS/models/NAME/threshold.json for scoring, and measure the test split: accuracy, balanced accuracy, ROC and "
        "PR AUC, precision, recall, F1, confusion matrix (AGN = positive), also at 0.5 and the paper's 0.3; "
        "beside the paper's and Guo et al. 2022's numbers.",
    )
    _workspace_arg(evaluate)
    evaluate.add_argument("--model", help="model directory name under WS/models/ (default paper)")
    evaluate.add_argument("--threshold-policy", help="balanced (default: max balanced accuracy), youden, f1, "
                          "purity:P (lowest threshold with AGN precision >= P), fixed:T")  # fmt: skip
    evaluate.add_argument("--tta", action="store_true", default=None, help="average the 8 flips/rotations")
    evaluate.set_defaults(handler=_evaluate, needs_cluster=False)

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
    _workspace_arg(score)
    score.add_argument("--model", help="the model directory train wrote (WS/models/NAME), its model.keras, or NAME")
    score.add_argument("--images", metavar="COLUMN", help="score local image files named in this catalog column "
                       "(JPEG/PNG, any size; relative to the catalog file) instead of fetching cutouts")  # fmt: skip
    score.add_argument("--threshold", type=float, help="P(AGN) at or above which label = 1 (default: the model's "
                       "threshold.json from evaluate)")  # fmt: skip
    score.add_argument("--batch-size", type=int, help="images per prediction (default 1024 on a GPU, 256 on a CPU)")
    score.add_argument("--tta", action="store_true", default=None, help="average the 8 flips/rotations (8x slower)")
    score.add_argument("--restart", action="store_true", default=None,
                       help="discard earlier scores (needed with another model, threshold or catalog)")  # fmt: skip
    _catalog_args(score)
    _fetch_args(score, url_required=False, restart=False)
    score.set_defaults(handler=_score)

    run = stages.add_parser(
        "run",
        help="the whole pipeline from one config: sky -> ingest -> label -> fetch -> train -> evaluate -> score",
        description="Run every stage of a config file (tables [ingest], [label], [fetch], [train], [evaluate], "
        "[score], [cluster]; flags override it), skipping each stage whose outputs are complete for the same inputs "
        "and settings; a changed setting reruns exactly the stages after it. Without catalog files ([ingest] inputs "
        "or --catalog) an offline NSA-like sky of --n galaxies is made in WS/sky/; without a cutout URL, cutouts come "
        "from an offline sky server started on 127.0.0.1 (synthetic images, no network). Scoring runs when the "
        "config has a [score] table, or with --score. `agnsurvey init` writes a commented config to start from.",
    )
    run.add_argument("run_config", nargs="?", type=Path, metavar="CONFIG.toml",
                     help="the run's config (or the global --config)")  # fmt: skip
    _workspace_arg(run)
    run.add_argument("--catalog", nargs="+", metavar="CATALOG", help="catalog files instead of the offline sky")
    run.add_argument("--n", type=int, help="galaxies in the offline sky (default 20000)")
    run.add_argument("--seed", type=int, help="offline sky seed (default 0)")
    run.add_argument("--epochs", type=int, help="training epochs (default 10)")
    run.add_argument("--score", action="store_true", default=None, help="also score every catalog row")
    run.add_argument("--until", choices=cfg.RUN_STAGES[1:], help="the last stage to run (default: all)")
    _label_args(run)
    _fetch_args(run, url_required=False)
    run.set_defaults(handler=_run)

    demo = stages.add_parser(
        "demo",
        help="the whole pipeline on an offline sky, end to end, in minutes: metrics beside the paper's",
        description="`run` on a built-in config over an offline NSA-like sky of --n galaxies: the offline cutout "
        "server is started in-process, work runs on a LocalCluster, a paper CNN is trained, evaluated and used to "
        "score every galaxy. Prints the metrics next to the paper's and where the report and plots are.",
    )
    demo.add_argument("--n", type=int, default=DEMO_N, help=f"galaxies in the offline sky (default {DEMO_N:,})")
    demo.add_argument("--workspace", "-w", type=Path, default=Path("agnsurvey-demo"),
                      help="the demo's directory (default ./agnsurvey-demo)")  # fmt: skip
    demo.add_argument("--epochs", type=int, help=f"training epochs (default {DEMO_EPOCHS})")
    demo.add_argument("--restart", action="store_true", help="rebuild a demo workspace made with another --n")
    demo.set_defaults(handler=_demo)

    init = stages.add_parser(
        "init",
        help="write a commented config for the real NSA v0_1_2 catalog and the real cutout service",
        description="Write DIR/agnsurvey.toml: every table `agnsurvey run` reads, commented, for the real NSA v0_1_2 "
        "catalog (nsa_v0_1_2.fits) and the Legacy Surveys cutout service, with polite defaults. Edit, then "
        "`agnsurvey run DIR/agnsurvey.toml`.",
    )
    init.add_argument("directory", nargs="?", type=Path, default=Path("."), help="where to write it (default .)")
    init.add_argument("--force", action="store_true", help="replace an existing agnsurvey.toml")
    init.set_defaults(handler=_init, needs_cluster=False)
    bench = stages.add_parser(
        "bench",
        help="run the benchmarks in benchmarks/ and print one table: rate beside a reference measured in the same run",
        description="Run benchmarks/bench_<STAGE>.py (catalog: ingest+label vs pandas and the I/O floor; fetch: vs "
        "the latency/CPU bound; train: input pipeline vs the in-memory ceiling; score: Dask scoring vs the in-memory "
        "ceiling, streaming fetch+score vs fetch alone), each writing its JSON with machine info to "
        "benchmarks/results/, then print one table and write the combined JSON there. --quick: small sizes.",
    )
    bench.add_argument("suite", nargs="?", default="all", choices=["catalog", "fetch", "train", "score", "all"],
                       help="which benchmark (default all)")  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="small sizes: a check in minutes, not a measurement")
    bench.set_defaults(handler=_bench, needs_cluster=False)
    for leaf in _leaf_parsers(stages):
        if leaf.get_default("handler") is not _sky_serve:
            _cluster_args(leaf, argparse.SUPPRESS)  # --cluster / --workers also after the stage's name
    parser.epilog = _stage_list(stages) + "\n" + EXAMPLES
    return parser


def _cluster_args(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--cluster", default=default,
        help="where to run: local (default: a LocalCluster sized to this machine), local:N (N worker processes), "
        "local-cuda (one worker per GPU), slurm ([cluster.slurm] in --config), tcp://host:8786, or a scheduler file",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, dest="n_workers", default=default,
                        help="worker processes of a local cluster")  # fmt: skip
    parser.add_argument("--threads", type=int, dest="threads_per_worker", default=default,
                        help="threads per local worker")  # fmt: skip


def _leaf_parsers(stages: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every stage's parser, and for a stage with commands (sky) every command's."""
    leaves = []
    for sub in stages.choices.values():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        leaves += _leaf_parsers(nested[0]) if nested else [sub]
    return leaves


def _stage_list(stages: argparse._SubParsersAction) -> str:
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


def _catalog_args(parser: argparse.ArgumentParser) -> None:
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


def _workspace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", "-w", type=Path, help="the run's directory (or set workspace in --config)")


def _fetch_args(parser: argparse.ArgumentParser, url_required: bool = True, restart: bool = True) -> None:
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
    if restart:
        parser.add_argument("--restart", action="store_true", default=None, help="discard an existing cube")
    if url_required:
        parser.add_argument(
            "--rows",
            choices=FETCH_ROWS,
            help="catalog rows to fetch: labelled (default when WS/labels/ exists), all (default otherwise: "
            "scoring needs no labels); the others stay pending",
        )


def _label_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        help="paper (default): SF iff below Kauffmann 2003 and x < -0.1; kewley2001: the maximum-starburst "
        "line; three-class: SF / composite / AGN",
    )
    parser.add_argument("--min-snr", type=float, help="require flux/err >= X in all four lines")
    parser.add_argument("--split", type=_fractions, help="train,val,test fractions (default 0.75,0.15,0.10)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="skip BPT plots")


def _fractions(text: str) -> tuple[float, ...]:
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


# --- handlers: build the stage's arguments, call the stage, print its summary --------------------
# ``client()`` connects to the cluster on first use: arguments are validated before a cluster starts.


def _sky_make(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
    from pipeline.synthetic.catalog import make_sky

    args = cfg.build(SkyArgs, raw, "sky", out=ns.out, n=ns.n, seed=ns.seed, partition_rows=ns.partition_rows,
                     layout=ns.layout)  # fmt: skip
    return [_print_summary("sky make", make_sky(args, client=client()))]


def _sky_serve(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
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


def _ingest_args(ns: argparse.Namespace, raw: dict, inputs: Sequence[str]) -> IngestArgs:
    return cfg.build(
        IngestArgs,
        raw,
        "ingest",
        workspace=ns.workspace,
        inputs=tuple(inputs),
        columns=parse_columns(getattr(ns, "column", [])) or None,
        radius_column=getattr(ns, "radius_column", None),
        max_rows=getattr(ns, "max_rows", None),
        chunk_rows=getattr(ns, "chunk_rows", None),
        format=getattr(ns, "format", None),
        hdu=getattr(ns, "hdu", None),
        id_kind=getattr(ns, "id_kind", None),
    )


def _label_args_from(ns: argparse.Namespace, raw: dict) -> LabelArgs:
    return cfg.build(
        LabelArgs,
        raw,
        "label",
        workspace=ns.workspace,
        scheme=ns.scheme,
        min_snr=ns.min_snr,
        split=ns.split,
        plots=ns.plots,
    )


def _fetch_args_from(ns: argparse.Namespace, raw: dict, cutout_url: str | None = None) -> FetchArgs:
    return cfg.build(
        FetchArgs,
        raw,
        "fetch",
        workspace=ns.workspace,
        cutout_url=cutout_url or ns.cutout_url,
        layer=ns.layer,
        size=ns.size,
        image_size=ns.image_size,
        concurrency=ns.concurrency,
        rate=ns.rate,
        retries=ns.retries,
        deadline_s=ns.deadline_s,
        restart=ns.restart,
        rows=getattr(ns, "rows", None),
    )


def _fetch(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
    from pipeline.images.fetch import fetch

    args = _fetch_args_from(ns, raw)
    return [_print_summary("fetch", fetch(args, client=client()))]


def _ingest(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
    from pipeline.catalog.ingest import ingest

    args = _ingest_args(ns, raw, ns.catalogs)
    return [_print_summary("ingest", ingest(args, client=client()))]


def _label(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
    from pipeline.catalog.label import label

    args = _label_args_from(ns, raw)
    return [_print_summary("label", label(args, client=client()))]


def _train(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
    from pipeline.learn.quiet_import import import_keras

    import_keras()
    from pipeline.learn.train import train

    args = cfg.build(
        TrainArgs, raw, "train", workspace=ns.workspace, model=ns.model, name=ns.name, epochs=ns.epochs,
        batch_size=ns.batch_size, lr=ns.lr, precision=ns.precision, devices=ns.devices, accelerator=ns.accelerator,
        composites=ns.composites, class_weight=ns.class_weight, augment=ns.augment, shuffle_buffer=ns.shuffle_buffer,
        seed=ns.seed, restart=ns.restart,
    )  # fmt: skip
    processes = ns.cluster or ns.n_workers or raw.get("cluster", {}).get("spec")
    if processes:  # one training process per Dask worker
        ns.needs_cluster = True
    return [_print_summary("train", train(args, client=client() if processes else None))]


def _evaluate(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
    from pipeline.learn.quiet_import import import_keras

    import_keras()
    from pipeline.learn.evaluate import evaluate

    args = cfg.build(EvaluateArgs, raw, "evaluate", workspace=ns.workspace, model=ns.model,
                     threshold_policy=ns.threshold_policy, tta=ns.tta)  # fmt: skip
    return [_print_summary("evaluate", evaluate(args))]


def _score_args(ns: argparse.Namespace, raw: dict) -> ScoreArgs:
    """The score stage's arguments; its cutouts are fetched with the [fetch] settings and flags."""
    fetch_table = raw.get("fetch", {})
    url = ns.cutout_url or fetch_table.get("cutout_url")
    fetch_args = _fetch_args_from(ns, raw) if url else None
    score_table = raw.get("score", {})
    ingest_table = raw.get("ingest", {})
    wanted = ("objid", "ra", "dec", "radius_arcsec")
    positions = {k: v for k, v in ingest_table.get("columns", {}).items() if k in wanted}
    columns = {**positions, **score_table.get("columns", {})}  # not the line fluxes: scoring needs none
    if "radius_column" in ingest_table:  # cutouts framed as the training ones were
        score_table = {"radius_column": ingest_table["radius_column"], **score_table}
    return cfg.build(
        ScoreArgs, {**raw, "score": {**score_table, "columns": columns}}, "score", workspace=ns.workspace,
        model=ns.model, inputs=tuple(ns.catalogs) or None, columns=parse_columns(ns.column) or None,
        radius_column=ns.radius_column, format=ns.format, hdu=ns.hdu, id_kind=ns.id_kind, images=ns.images,
        threshold=ns.threshold, batch_size=ns.batch_size, tta=ns.tta, restart=ns.restart, fetch=fetch_args,
    )  # fmt: skip


def _score(ns: argparse.Namespace, raw: dict, client: ClientFactory) -> list[Manifest]:
    from pipeline.score.score import score

    args = _score_args(ns, raw)
    return [_print_summary("score", score(args, client=client(), report=_print_summary))]


ClientFactory = Callable[[], Any]


DEMO_N, DEMO_EPOCHS = 20_000, 5


def _run(ns: argparse.Namespace, raw: dict, connect: ClientFactory) -> list[Manifest]:
    args = cfg.run_args(
        raw, workspace=ns.workspace, catalogs=tuple(ns.catalog or ()), score=ns.score, until=ns.until,
        restart=ns.restart, sky={"n": ns.n, "seed": ns.seed}, train={"epochs": ns.epochs},
        label={"scheme": ns.scheme, "min_snr": ns.min_snr, "split": ns.split, "plots": ns.plots},
        fetch={"cutout_url": ns.cutout_url, "layer": ns.layer, "size": ns.size, "image_size": ns.image_size,
               "concurrency": ns.concurrency, "rate": ns.rate, "retries": ns.retries, "deadline_s": ns.deadline_s},
    )  # fmt: skip
    return _run_pipeline(args, connect)


def _demo(ns: argparse.Namespace, raw: dict, connect: ClientFactory) -> list[Manifest]:
    raw = {"workspace": str(ns.workspace), "sky": {"n": ns.n, "seed": 0}, "score": {},
           "train": {"epochs": ns.epochs or DEMO_EPOCHS}}  # fmt: skip
    args = cfg.run_args(raw, restart=ns.restart)
    print(f"agnsurvey demo: {ns.n:,} offline galaxies in {args.workspace.root} (re-run to resume; nothing leaves "
          "this machine)")  # fmt: skip
    return _run_pipeline(args, connect)


def _run_pipeline(args: cfg.RunArgs, connect: ClientFactory) -> list[Manifest]:
    """Run every stage of ``args`` on the cluster, then print the run's table."""
    from pipeline.learn.quiet_import import import_keras
    from pipeline.run import run_pipeline

    import_keras()  # train and evaluate run in this process
    stages = run_pipeline(args, client=connect(), report=_print_summary)
    _print_run_table(args, stages)
    return [s.manifest for s in stages if s.manifest is not None]


def _init(ns: argparse.Namespace, raw: dict, connect: ClientFactory) -> list[Manifest]:
    from pipeline.templates import write_init_config

    path = write_init_config(ns.directory, force=ns.force)
    print(f"wrote {path}: edit the catalog path and [cluster], then `agnsurvey run {path}`")
    return []


def _bench(ns: argparse.Namespace, raw: dict, connect: ClientFactory) -> list[Manifest]:
    from pipeline.bench import run_benchmarks, table

    rows, path = run_benchmarks(ns.suite, quick=ns.quick)
    print(f"\nagnsurvey bench {ns.suite}{' --quick' if ns.quick else ''}\n{table(rows)}\n\nwrote {path}")
    return []


def _print_run_table(args: cfg.RunArgs, stages: list) -> None:
    """One table for the whole run: per stage, what it did, rows, images, a metric, time; then where
    the report is."""
    from pipeline.run import manifest_name

    ws = args.workspace
    lines = [("stage", "done", "rows", "images", "result", "time")]
    for s in stages:
        m = s.manifest.to_dict() if s.manifest is not None else (ws.read_manifest(manifest_name(args, s.name)) or {})
        extra = m.get("extra", {})
        status = extra.get("status", {})
        images = status.get("ok") if s.name in ("fetch", "score") else None
        result = ""
        if s.name == "label":
            result = ", ".join(f"{k} {v:,}" for k, v in (extra.get("classes") or {}).items())
        elif s.name == "train":
            final = extra.get("final") or {}
            result = f"{extra.get('epochs_done')} epochs, val AUC {final['val_auc']:.3f}" if "val_auc" in final else ""
        elif s.name == "evaluate":
            test = extra.get("test") or {}
            paper = extra.get("paper") or {}
            result = (f"test AUC {test.get('roc_auc', 0):.3f} (paper {paper.get('roc_auc', '?')}), accuracy "
                      f"{test.get('accuracy', 0):.3f} (paper {paper.get('accuracy', '?')}), threshold "
                      f"{extra.get('threshold', 0):.3f}") if test else ""  # fmt: skip
        elif s.name == "score":
            labels = extra.get("labels") or {}
            result = f"{labels.get('agn', 0):,} AGN, {labels.get('sf', 0):,} SF" if labels else ""
        rows = m.get("rows_out")
        done = "ran" if s.ran else "skipped"
        if s.manifest is not None and s.manifest.unfinished:
            done = "incomplete"
        lines.append((s.name, done, f"{rows:,}" if isinstance(rows, int) else "", f"{images:,}" if images else "",
                      result, f"{s.seconds:.1f} s" if s.ran else "-"))  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    print(f"\nrun {ws.root}")
    for row in lines:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    report = ws.reports / "report.md"
    if report.exists():
        print(f"\nreport  {report}\nplots   {', '.join(p.name for p in sorted(ws.reports.glob('*.png')))} in "
              f"{ws.reports}")  # fmt: skip
    if ws.scores.exists():
        print(f"scores  {ws.scores} (HATS: objid, ra, dec, p_agn, label, status; lsdb.open_catalog reads it)")


def _print_summary(stage: str, manifest: Manifest) -> Manifest:
    """A short table: rows in/out, classes, drops by reason, speed, outputs; then any warnings."""
    m = manifest.to_dict()
    extra = m.get("extra", {})
    rows: list[tuple[str, str]] = [("rows in", f"{m['rows_in']:,}")] if m.get("rows_in") else []
    rows.append(("rows out", f"{m.get('rows_out', 0):,}"))
    for name, n in (extra.get("classes") or extra.get("class_counts") or {}).items():
        rows.append((f"  class {name}", f"{n:,}"))
    for name, n in extra.get("status", {}).items():
        rows.append((f"  status {name}", f"{n:,}"))
    if "threshold" in extra and "policy" in extra:
        rows.append(("threshold", f"{extra['threshold']:.4f} ({extra.get('policy')}, chosen on the val split)"))
    paper = extra.get("paper", {})
    for section in ("final", "test"):
        for key, value in (extra.get(section) or {}).items():
            if isinstance(value, float | int):
                text = f"{value:,}" if isinstance(value, int) else f"{value:.4f}"
                rows.append((f"  {section} {key}", text + (f"  (paper {paper[key]:,})" if key in paper else "")))
    scoring = extra.get("scoring")
    if scoring:
        rows.append(("this run", f"{scoring['images']:,} images scored in {scoring['parts_scored']:,} parts "
                                 f"({scoring['images_per_second'] or 0:,.0f} img/s), {scoring['parts_skipped']:,} "
                                 "parts already complete"))  # fmt: skip
        labels = extra.get("labels", {})
        rows.append(("labels", f"{labels.get('agn', 0):,} AGN, {labels.get('sf', 0):,} star-forming at threshold "
                               f"{extra['threshold']:.4f}"))  # fmt: skip
    this_run = extra.get("this_run")
    if this_run:
        rows.append(("this run", f"{this_run['rows_requested']:,} rows requested, {this_run['requests']:,} requests, "
                                 f"{this_run['retries']:,} retries, {this_run['throttled']:,} throttled"))  # fmt: skip
    dropped = m.get("dropped", {})
    if m.get("rows_in") and "status" not in extra and (dropped or stage in ("ingest", "label")):
        rows.append(("dropped", f"{sum(dropped.values()):,}"))
        by_line = extra.get("problems_by_line")
        if by_line:
            rows.extend((f"  {reason} (rows may repeat)", f"{n:,}") for reason, n in by_line.items())
        else:
            rows.extend((f"  {reason}", f"{n:,}") for reason, n in dropped.items())
    seconds, done = m.get("seconds", 0.0), m.get("rows_in") or m.get("rows_out")
    if seconds and done:
        rows.append(("time", f"{seconds:.1f} s ({done / seconds:,.0f} rows/s)"))
    for key, value in m.get("outputs", {}).items():
        if isinstance(value, dict) and "path" in value:
            value = value["path"]
        if isinstance(value, str | int):
            rows.append((key, str(value)))
        elif isinstance(value, list) and value and isinstance(value[0], str):
            rows.append((key, ", ".join(Path(v).name for v in value)))
    width = max(len(r[0]) for r in rows)
    print(f"\n{stage}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for warning in manifest.warnings:
        print(f"agnsurvey: warning: {warning}", file=sys.stderr)
    return manifest


def _configure_logging(debug: bool) -> None:
    """Our warnings and errors on stderr; Dask's INFO chatter only with --debug."""
    level = logging.DEBUG if debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        import distributed  # noqa: F401  (configures its loggers on import; we quiet them after)

        warnings.filterwarnings("ignore", module="dask.*")
        for name in ("distributed", "tornado", "bokeh", "asyncio"):  # asyncio: futures dropped at Ctrl-C
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; returns the exit code (see the module docstring)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    _configure_logging(ns.debug)
    if not ns.debug:  # TensorFlow's and XLA's C++ start-up chatter
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handler: Callable[..., list[Manifest]] = ns.handler
    _signals.update(signal=0, taken=False)
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    handlers = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable
    try:
        run_config = getattr(ns, "run_config", None)
        if run_config is not None and ns.config is not None and run_config != ns.config:
            raise ConfigError(f"two configs given ({ns.config} and {run_config}); give one")
        raw = cfg.load_config(run_config or ns.config)  # the cluster too comes from the run's config
        cluster = cfg.build(
            cfg.ClusterConfig, raw, "cluster", spec=ns.cluster, n_workers=ns.n_workers,
            threads_per_worker=ns.threads_per_worker,
        )  # fmt: skip
        with ExitStack() as stack:
            from cluster.client import show_progress
            from storage.workspace import clean_up_last

            stack.enter_context(clean_up_last())  # after the cluster is closed: its workers may still write
            stack.enter_context(_children_stopped_if_interrupted())  # and after every process it started is gone
            show_progress(not ns.quiet and sys.stderr.isatty())
            clients: list[Any] = []

            def client() -> Any:
                """The cluster's client, connected on first use (None for stages that need none)."""
                if not clients and getattr(ns, "needs_cluster", True):
                    clients.append(_open_cluster(stack, cluster, ns, raw))
                return clients[0] if clients else None

            try:
                manifests = handler(ns, raw, client)
            except KeyboardInterrupt:
                _signals["taken"] = True
                for sig in (signal.SIGINT, signal.SIGTERM):  # again while the cluster closes: leave at once
                    signal.signal(sig, _leave_now)
                raise
    except KeyboardInterrupt as exc:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # end a progress bar's line
        print(f"agnsurvey: {str(exc) or 'interrupted; re-run the same command to continue'}", file=sys.stderr)
        return EXIT_INTERRUPTED + (_signals["signal"] == signal.SIGTERM) * 13  # 130, or 143 for SIGTERM
    except Exception as exc:
        if ns.debug:
            raise
        print(f"agnsurvey: error: {_explain(exc, ns)}", file=sys.stderr)
        from cluster.devices import DeviceError

        return EXIT_ERROR if isinstance(exc, AgnSurveyError | OSError | MemoryError | DeviceError) else 1
    finally:
        _signals["taken"] = True
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        sys.unraisablehook = unraisable
    unfinished = [m.unfinished for m in manifests if m.unfinished]
    for text in unfinished:
        print(f"agnsurvey: incomplete: {text}", file=sys.stderr)
    return EXIT_INCOMPLETE if unfinished else EXIT_OK


def _open_cluster(stack: ExitStack, cluster: cfg.ClusterConfig, ns: argparse.Namespace, raw: dict) -> Any:
    """Connect to the configured cluster, print its dashboard, and check that the workers of a
    remote one see the workspace (before any work starts)."""
    from cluster.client import ClusterSpecError, check_workspace_visible, connect, dashboard_link, parse_spec

    try:
        kind = parse_spec(cluster.spec, cluster.n_workers, cluster.threads_per_worker, cluster.memory_limit,
                          cluster.slurm, ns.debug)  # fmt: skip
        client = stack.enter_context(connect(kind))
    except ClusterSpecError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot connect to cluster {cluster.spec!r}: {exc}") from None
    link = dashboard_link(client)
    if link and not ns.quiet:
        workers = len(client.scheduler_info().get("workers", {}))
        print(f"dask: {type(kind).__name__.lower()} cluster, {workers} workers, dashboard {link}", file=sys.stderr)
    workspace = getattr(ns, "workspace", None) or raw.get("workspace")
    if kind.remote:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise ConfigError(
                f"no Dask worker joined {cluster.spec!r} within {WORKERS_TIMEOUT_S:.0f} s; check that workers run "
                "(SLURM: squeue, and the jobs' logs) and can reach the scheduler"
            ) from None
    if kind.remote and workspace:
        try:
            check_workspace_visible(client, Path(workspace))
        except ClusterSpecError as exc:
            raise ConfigError(str(exc)) from None
    return client


NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
WORKERS_TIMEOUT_S = 300.0  # a remote cluster's first worker (a SLURM job may queue a while)


def _explain(exc: Exception, ns: argparse.Namespace) -> str:
    """One line for any error: ours say what to do; the OS's name the path and the fix."""
    if isinstance(exc, AgnSurveyError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; lower --image-size, --chunk-rows or --max-rows, or use fewer --threads per worker"
    if isinstance(exc, OSError):
        where = exc.filename or getattr(ns, "workspace", None) or "the workspace"
        if exc.errno == errno.EROFS:
            return f"{where} is on a read-only file system; choose a writable --workspace"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{where}: permission denied; check its permissions, or choose a writable --workspace"
        if exc.errno in NO_ROOM:
            return (
                f"no space left writing {where} ({os.strerror(exc.errno)}); free space there or choose a "
                "--workspace on another disk, then re-run: complete outputs were kept, the partial one removed"
            )
        return f"{where}: {exc.strerror or exc}"
    return f"unexpected {type(exc).__name__}: {exc} (re-run with --debug for the traceback, and please report it)"


_signals: dict[str, Any] = {"signal": 0, "taken": False}


def _on_signal(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM: a KeyboardInterrupt in the main thread, raised again every half second until
    the command has taken it (Python drops one raised inside a garbage collector's callback)."""
    _signals["signal"] = _signals["signal"] or signum
    timer = threading.Timer(0.5, lambda: _signals["taken"] or os.kill(os.getpid(), signum))
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def _unraisable(unraisable: Any) -> None:
    """Python's report of an exception it had to drop, but not of our KeyboardInterrupt: dropped in
    a garbage collector's callback, it is raised again by :func:`_on_signal`."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


@contextmanager
def _children_stopped_if_interrupted() -> Iterator[None]:
    """On Ctrl-C, stop the processes started within the block that still run (the embedded
    cluster's workers and the forkserver they come from), before the outputs' temporary directories
    are removed and their locks released (:func:`storage.workspace.clean_up_last`)."""
    import psutil

    before = {child.pid for child in psutil.Process().children(recursive=True)}
    try:
        yield
    except KeyboardInterrupt:
        _signals["taken"] = True  # taken: no re-raise may cut the stopping short
        server = _forkserver_started_since(before)
        _stop_children(spare={*before, *([server] if server else [])})
        if server:
            _end_forkserver(server)
        raise


def _forkserver_started_since(before: Collection[int]) -> int | None:
    """The pid of multiprocessing's forkserver if it runs and was started after ``before`` was taken."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return pid if pid is not None and pid not in before else None


def _end_forkserver(pid: int) -> None:
    """Kill the forkserver, then let multiprocessing reap it and forget it, so that a later command
    in this process (a notebook, a test) starts a new one; killed behind its back, the next start
    fails with ChildProcessError."""
    from multiprocessing import forkserver

    try:
        os.kill(pid, signal.SIGKILL)
        forkserver._forkserver._stop()
    except (OSError, AttributeError):
        pass


def _stop_children(spare: Collection[int] = ()) -> None:
    """Stop the processes this one started that still run (workers of an embedded cluster), but not
    multiprocessing's resource tracker, which cleans up after them, nor the processes in ``spare``."""
    import psutil

    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in spare and "resource_tracker" not in " ".join(child.cmdline()):
                children.append(child)
                child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)


def _leave_now(signum: int, frame: Any) -> None:
    _stop_children()
    print("agnsurvey: interrupted again; stopped at once (re-run the same command to continue)", file=sys.stderr)
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
