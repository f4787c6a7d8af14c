"""``agnsurvey <stage>``: parse arguments, build one validated config, call one stage function.

One small parser module per phase (:mod:`~pipeline.cli.sky`, ``catalog``, ``images``, ``learn``,
``score``, ``run``, ``bench``), registered from :data:`PHASES` in the order ``--help`` lists them;
each adds its stages' parsers and a handler per stage that builds the stage's arguments, calls
the stage and prints its summary. Nothing in ``pipeline`` imports this package.

Exit codes: 0 done; 1 an unexpected failure (a bug: ``--debug`` shows the traceback); 2 an error
(bad input, option, workspace or service: one line on stderr that says what to do); 3 incomplete
(what could be done was written, some rows failed or are left pending: re-run the same command to
continue); 130 interrupted (Ctrl-C; 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pipeline.cli import bench, catalog, images, interrupts, learn, options, run, score, sky
from pipeline.cli.connect import open_cluster
from pipeline.cli.explain import explain
from pipeline.config import ClusterConfig, build, load_config
from pipeline.errors import AgnSurveyError, ConfigError
from storage.manifest import Manifest

EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 2, 3, interrupts.EXIT_INTERRUPTED
PHASES = (sky, catalog, images, learn, score, run, bench)  # each adds its stages' parsers: add_parsers(stages)

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
    options.cluster_args(parser, None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for phase in PHASES:
        phase.add_parsers(stages)
    for leaf in options.leaf_parsers(stages):
        if leaf.get_default("cluster_options") is not False:
            options.cluster_args(leaf, argparse.SUPPRESS)  # --cluster / --workers also after the stage's name
    parser.epilog = options.stage_list(stages) + "\n" + EXAMPLES
    return parser


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
    interrupts.state.update(signal=0, taken=False)
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    handlers = ({sig: signal.signal(sig, interrupts.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
                if in_main else {})  # fmt: skip
    unraisable, sys.unraisablehook = sys.unraisablehook, interrupts.unraisable
    try:
        run_config = getattr(ns, "run_config", None)
        if run_config is not None and ns.config is not None and run_config != ns.config:
            raise ConfigError(f"two configs given ({ns.config} and {run_config}); give one")
        raw = load_config(run_config or ns.config)  # the cluster too comes from the run's config
        cluster = build(ClusterConfig, raw, spec=ns.cluster, n_workers=ns.n_workers,
                        threads_per_worker=ns.threads_per_worker)  # fmt: skip
        with ExitStack() as stack:
            from cluster.client import show_progress
            from storage.workspace import clean_up_last

            stack.enter_context(clean_up_last())  # after the cluster is closed: its workers may still write
            stack.enter_context(interrupts.children_stopped_if_interrupted())  # and after every process it started
            show_progress(not ns.quiet and sys.stderr.isatty())
            clients: list[Any] = []

            def client() -> Any:
                """The cluster's client, connected on first use (None for stages that need none)."""
                if not clients and getattr(ns, "needs_cluster", True):
                    clients.append(open_cluster(stack, cluster, ns, raw))
                return clients[0] if clients else None

            try:
                manifests = handler(ns, raw, client)
            except KeyboardInterrupt:
                interrupts.state["taken"] = True
                for sig in (signal.SIGINT, signal.SIGTERM):  # again while the cluster closes: leave at once
                    signal.signal(sig, interrupts.leave_now)
                raise
    except KeyboardInterrupt as exc:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # end a progress bar's line
        print(f"agnsurvey: {str(exc) or 'interrupted; re-run the same command to continue'}", file=sys.stderr)
        return EXIT_INTERRUPTED + (interrupts.state["signal"] == signal.SIGTERM) * 13  # 130, or 143 for SIGTERM
    except Exception as exc:
        if ns.debug:
            raise
        print(f"agnsurvey: error: {explain(exc, ns)}", file=sys.stderr)
        from cluster.devices import DeviceError

        return EXIT_ERROR if isinstance(exc, AgnSurveyError | OSError | MemoryError | DeviceError) else 1
    finally:
        interrupts.state["taken"] = True
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        sys.unraisablehook = unraisable
    unfinished = [m.unfinished for m in manifests if m.unfinished]
    for text in unfinished:
        print(f"agnsurvey: incomplete: {text}", file=sys.stderr)
    return EXIT_INCOMPLETE if unfinished else EXIT_OK
