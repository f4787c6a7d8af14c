"""``agnsurvey run``, ``demo`` and ``init``: the whole pipeline from one config."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import options
from pipeline.cli.summary import print_run_table, print_summary
from pipeline.config import RUN_STAGES, RunArgs, run_args
from storage.manifest import Manifest

DEMO_N, DEMO_EPOCHS = 20_000, 5


def add_parsers(stages: argparse._SubParsersAction) -> None:
    """``run``, ``demo`` and ``init``."""
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
    options.workspace_arg(run)
    run.add_argument("--catalog", nargs="+", metavar="CATALOG", help="catalog files instead of the offline sky")
    run.add_argument("--n", type=int, help="galaxies in the offline sky (default 20000)")
    run.add_argument("--seed", type=int, help="offline sky seed (default 0)")
    run.add_argument("--epochs", type=int, help="training epochs (default 10)")
    run.add_argument("--score", action="store_true", default=None, help="also score every catalog row")
    run.add_argument("--until", choices=RUN_STAGES[1:], help="the last stage to run (default: all)")
    options.label_args(run)
    options.fetch_args(run, url_required=False)
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


def _run(ns: argparse.Namespace, raw: dict, connect: options.ClientFactory) -> list[Manifest]:
    args = run_args(
        raw, workspace=ns.workspace, catalogs=tuple(ns.catalog or ()), score=ns.score, until=ns.until,
        restart=ns.restart, sky={"n": ns.n, "seed": ns.seed}, train={"epochs": ns.epochs},
        label={"scheme": ns.scheme, "min_snr": ns.min_snr, "split": ns.split, "plots": ns.plots},
        fetch={"cutout_url": ns.cutout_url, "layer": ns.layer, "size": ns.size, "image_size": ns.image_size,
               "concurrency": ns.concurrency, "rate": ns.rate, "retries": ns.retries, "deadline_s": ns.deadline_s,
               "pixels": ns.pixels, "bands": ns.bands, "with_invvar": ns.with_invvar, "bricks": ns.bricks},
    )  # fmt: skip
    return _run_pipeline(args, connect)


def _demo(ns: argparse.Namespace, raw: dict, connect: options.ClientFactory) -> list[Manifest]:
    raw = {"workspace": str(ns.workspace), "sky": {"n": ns.n, "seed": 0}, "score": {},
           "train": {"epochs": ns.epochs or DEMO_EPOCHS}}  # fmt: skip
    args = run_args(raw, restart=ns.restart)
    print(f"agnsurvey demo: {ns.n:,} offline galaxies in {args.workspace.root} (re-run to resume; nothing leaves "
          "this machine)")  # fmt: skip
    return _run_pipeline(args, connect)


def _run_pipeline(args: RunArgs, connect: options.ClientFactory) -> list[Manifest]:
    """Run every stage of ``args`` on the cluster, then print the run's table."""
    from pipeline.learn.quiet_import import import_keras
    from pipeline.run import run_pipeline

    import_keras()  # train and evaluate run in this process
    stages = run_pipeline(args, client=connect(), report=print_summary)
    print_run_table(args, stages)
    return [s.manifest for s in stages if s.manifest is not None]


def _init(ns: argparse.Namespace, raw: dict, connect: options.ClientFactory) -> list[Manifest]:
    from pipeline.cli.templates import write_init_config

    path = write_init_config(ns.directory, force=ns.force)
    print(f"wrote {path}: edit the catalog path and [cluster], then `agnsurvey run {path}`")
    return []
