"""The command line: help that teaches, errors without tracebacks, exit codes."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import nsa_rows, write_nsa_fits

from pipeline.cli import main
from pipeline.cli.options import parse_columns
from pipeline.errors import ConfigError


def test_help_lists_stages_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("ingest", "label", "sky make", "--cluster", "agnsurvey run --workspace"):
        assert word in out


def test_parse_columns():
    assert parse_columns(["ha_flux=H_ALPHA", " ra = radeg "]) == {"ha_flux": "H_ALPHA", "ra": "radeg"}
    with pytest.raises(ConfigError, match=r"write CANONICAL=SOURCE"):
        parse_columns(["ha_flux"])


def test_error_is_one_line_with_exit_code_2(tmp_path):
    rows = nsa_rows(5)
    del rows["DEC"]
    write_nsa_fits(tmp_path / "nodec.fits", rows)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--quiet", "--workers", "1", "ingest", str(tmp_path / "nodec.fits"),
         "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("agnsurvey: error:") and "Traceback" not in proc.stderr
    assert "nodec.fits" in proc.stderr and "--column dec=NAME" in proc.stderr


def test_bad_cluster_spec(tmp_path, capsys):
    code = main(["--cluster", "nowhere", "label", "--workspace", str(tmp_path)])
    assert code == 2
    assert "cluster spec 'nowhere'" in capsys.readouterr().err
    assert main(["--cluster", "tcp://", "label", "--workspace", str(tmp_path)]) == 2  # not an unexpected failure
    assert capsys.readouterr().err.startswith("agnsurvey: error: cannot connect to cluster 'tcp://': ")


def test_an_interrupt_python_drops_is_raised_again(tmp_path):
    """Python discards a KeyboardInterrupt raised inside a garbage collector's callback; the CLI's
    handler raises it again until the command has taken it."""
    script = textwrap.dedent(
        """
        import os, signal, time
        from pipeline.cli import interrupts
        signal.signal(signal.SIGINT, interrupts.on_signal)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass  # dropped, as in a gc callback
        try:
            time.sleep(5)
            print("lost")
        except KeyboardInterrupt:
            print("raised again")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "raised again", proc.stderr


def test_run_is_the_whole_main_job(tmp_path, capsys):
    """`agnsurvey run` on the offline sky: sky → ingest → label → fetch, with manifests, labels, plots, cube."""
    ws = tmp_path / "ws"
    assert main(["--quiet", "--workers", "2", "run", "--workspace", str(ws), "--n", "1500", "--seed", "4",
                 "--until", "fetch"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "sky make" in out and "ingest" in out and "label" in out and "class sf" in out
    ingest_m = json.loads((ws / "manifests" / "ingest.json").read_text())
    label_m = json.loads((ws / "manifests" / "label.json").read_text())
    assert ingest_m["rows_in"] == 1500 and ingest_m["inputs"][0]["path"].endswith("nsa_sky.fits")
    assert label_m["rows_in"] == ingest_m["rows_out"]
    assert label_m["rows_out"] + sum(label_m["dropped"].values()) == label_m["rows_in"]
    assert sorted(p.name for p in (ws / "reports").iterdir()) == ["bpt_agn.png", "bpt_all.png", "bpt_sf.png"]
    labels = pd.read_parquet(ws / "labels" / "dataset")
    assert len(labels) == label_m["rows_out"] and set(labels["label"]) == {0, 1}
    fetch_m = json.loads((ws / "manifests" / "fetch.json").read_text())
    assert fetch_m["rows_in"] == len(labels) and fetch_m["extra"]["status"]["ok"] == len(labels)
    assert fetch_m["parameters"]["cutout_url"].startswith("http://127.0.0.1:")
    cube = zarr.open_group(str(ws / "cube.zarr"), mode="r")  # one row per catalog row; the labelled ones fetched
    assert cube["images"].shape == (ingest_m["rows_out"], 128, 128, 3)
    status = cube["status"][:]
    assert (status[labels["cube_row"].to_numpy()] == 1).all() and (status == 1).sum() == len(labels)
    assert "fetch" in out and "status ok" in out


def test_help_lists_every_stage():
    import argparse

    from pipeline.cli import build_parser

    parser = build_parser()
    help_text = parser.format_help()
    stage_list = help_text.split("stages (", 1)[1].split("\n\n", 1)[0]
    stages = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in stages.choices.items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for full in [f"{name} {n}" for n in nested[0].choices] if nested else [name]:
            assert f"\n  {full} " in stage_list, f"{full!r} missing from the stage list of --help"


def test_a_canonical_column_mapped_twice_is_an_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--column maps ha_flux twice \(ha_flux=A and ha_flux=B\)"):
        parse_columns(["ha_flux=A", "nii_flux=N", "ha_flux=B"])
    code = main(["--cluster", "nowhere", "ingest", "x.fits", "--workspace", str(tmp_path / "ws"),
                 "--column", "ha_flux=A", "--column", "ha_flux=B"])  # fmt: skip
    assert code == 2 and "maps ha_flux twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "problem"), [("not json {", "is not JSON"), ('{"type": "Scheduler"}', "has no scheduler address")]
)
def test_a_bad_scheduler_file_is_one_line(tmp_path, capsys, content, problem):
    path = tmp_path / "scheduler.json"
    path.write_text(content)
    code = main(["--cluster", str(path), "label", "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"scheduler file {path} {problem}" in err[0] and "dask scheduler --scheduler-file" in err[0]


def test_missing_line_columns_are_named_at_ingest_and_at_label(tmp_path, capsys):
    from pipeline.catalog.args import LabelArgs
    from pipeline.catalog.label import label
    from pipeline.errors import CatalogError

    rows = nsa_rows(50)
    del rows["HBFLUX"], rows["O3FLUX"]
    write_nsa_fits(tmp_path / "two_lines.fits", rows)
    assert main(["--quiet", "--workers", "1", "ingest", str(tmp_path / "two_lines.fits"), "--workspace",
                 str(tmp_path / "ws")]) == 0  # fmt: skip
    warning = capsys.readouterr().err.strip()
    assert warning == (
        "agnsurvey: warning: two_lines.fits has no column for hb_flux (HBFLUX), oiii_flux (O3FLUX): its rows "
        "cannot be labelled (label needs all four lines); map them with --column hb_flux=NAME --column "
        "oiii_flux=NAME, or use the file only for scoring"
    )
    with pytest.raises(CatalogError) as err:
        label(LabelArgs(workspace=tmp_path / "ws"))
    message = str(err.value)
    assert "two_lines.fits has no column for hb_flux (HBFLUX), oiii_flux (O3FLUX)" in message
    assert message.endswith("re-ingest mapping them with --column hb_flux=NAME --column oiii_flux=NAME")


def test_run_refuses_a_workspace_made_from_other_inputs_but_relabels_without_refetching(tmp_path, capsys):
    ws = tmp_path / "ws"
    r50 = tmp_path / "r50.toml"
    r50.write_text('[ingest]\nradius_column = "PETROTH50"\n')
    run = ["run", "--workspace", str(ws), "--n", "400", "--until", "fetch"]
    cli = ["--quiet", "--workers", "1"]
    assert main([*cli, *run, "--seed", "1"]) == 0
    before = {p.name: p.read_bytes() for p in (ws / "manifests").iterdir()}
    catalog = pd.read_parquet(ws / "catalog" / "dataset")
    capsys.readouterr()
    for argv, named in [
        ([*cli, *run, "--seed", "2"], "source.seed 1 -> 2"),
        ([*cli, "--config", str(r50), *run, "--seed", "1"], "ingest.radius_column 'PETROTH90' -> 'PETROTH50'"),
        ([*cli, *run, "--seed", "1", "--image-size", "64"], "cube.image_size 128 -> 64"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"was built from other inputs ({named}): this run would leave its catalog" in err[0]
        assert "pass --restart to rebuild it" in err[0]
    assert {p.name: p.read_bytes() for p in (ws / "manifests").iterdir()} == before  # nothing was touched
    pd.testing.assert_frame_equal(pd.read_parquet(ws / "catalog" / "dataset"), catalog)

    assert main([*cli, *run, "--seed", "1", "--min-snr", "3"]) == 0  # relabelled: every cutout it needs is there
    fetched = json.loads((ws / "manifests" / "fetch.json").read_text())
    assert fetched["parameters"] and fetched["extra"]["this_run"]["rows_requested"] == 0
    assert json.loads((ws / "manifests" / "label.json").read_text())["parameters"]["min_snr"] == 3.0

    catalog_run = [*cli, "run", "--workspace", str(tmp_path / "wc"), "--catalog", str(ws / "sky" / "nsa_sky.fits"),
                   "--until", "fetch"]  # fmt: skip
    assert main(catalog_run) == 0
    (ws / "sky" / "nsa_sky.fits").write_bytes((ws / "sky" / "nsa_sky.fits").read_bytes())  # same path, new file
    assert main(catalog_run) == 2 and "source.mtime_ns" in capsys.readouterr().err

    (ws / "manifests" / "run.json").unlink()  # as a workspace made before runs recorded their inputs
    assert main([*cli, *run, "--seed", "1"]) == 0  # its manifests say it is the same: it resumes
    assert main([*cli, *run, "--seed", "2"]) == 2
    assert main([*cli, *run, "--seed", "2", "--restart"]) == 0
    new_catalog = pd.read_parquet(ws / "catalog" / "dataset").sort_values("cube_row")
    cube = zarr.open_group(str(ws / "cube.zarr"), mode="r")
    np.testing.assert_array_equal(cube["objid"][:], new_catalog["objid"])  # the cube is the new catalog's
    assert not pd.read_parquet(ws / "catalog" / "dataset")["objid"].equals(catalog["objid"])


AFTER_AN_INTERRUPT = """
from pipeline.cli.interrupts import children_stopped_if_interrupted
from cluster.client import connect
try:
    with children_stopped_if_interrupted(), connect("local:1") as client:  # as main() nests them
        assert client.submit(sum, [1, 2]).result() == 3
        raise KeyboardInterrupt
except KeyboardInterrupt:
    pass
with connect("local:1") as client:  # a notebook's next command in the same process
    print(client.submit(sum, [3, 4]).result())
"""


def test_after_an_interrupted_command_the_same_process_starts_a_cluster_again():
    # Ctrl-C stops the forkserver the command started: reaped behind multiprocessing's back, the
    # next cluster in this process failed with "ChildProcessError: No child processes".
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", AFTER_AN_INTERRUPT], cwd=Path(__file__).resolve().parents[3],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.split()[-1] == "7", out.stderr[-2000:]
