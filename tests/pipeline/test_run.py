"""`agnsurvey run` (one config, every stage, current stages skipped), `demo` and `init`."""

import json
import time
import tomllib

import pytest

from pipeline.cli import main
from pipeline.cli.templates import write_init_config
from pipeline.config import load_config, run_args
from pipeline.errors import ConfigError
from pipeline.run import run_pipeline
from storage.tables import read_scores

SMALL = """\
workspace = "{ws}"
[sky]
n = 1200
seed = 6
[fetch]
size = 64
image_size = 32
shard_images = 256
[train]
epochs = 1
batch_size = 32
[evaluate]
threshold_policy = "{policy}"
[label]
{label}
[score]
"""


def ran(capsys) -> dict[str, str]:
    """Stage → ran / skipped, from the run's final table."""
    out = capsys.readouterr().out
    table = out.split("\nrun ", 1)[1].splitlines()[2:]
    return {cells[0]: cells[1] for cells in (line.split() for line in table) if len(cells) > 1 and cells[1] in
            ("ran", "skipped", "incomplete")}  # fmt: skip


def test_run_twice_skips_everything_and_a_change_reruns_exactly_what_follows(tmp_path, capsys):
    ws = tmp_path / "ws"
    config = tmp_path / "run.toml"
    config.write_text(SMALL.format(ws=ws, policy="balanced", label=""))
    cli = ["--quiet", "--workers", "2", "run", str(config)]
    assert main(cli) == 0
    assert set(ran(capsys).values()) == {"ran"}
    scores = read_scores(ws)
    assert len(scores) == 1200 and scores["objid"].is_unique and (scores["status"] == "ok").all()

    started = time.monotonic()
    assert main(cli) == 0
    assert set(ran(capsys).values()) == {"skipped"}
    assert time.monotonic() - started < 60  # seconds: a cluster starts, nothing is computed

    config.write_text(SMALL.format(ws=ws, policy="youden", label=""))
    assert main(cli) == 0
    done = ran(capsys)
    assert [s for s, what in done.items() if what == "ran"] == ["evaluate", "score"], done
    assert json.loads((ws / "models" / "paper" / "threshold.json").read_text())["policy"] == "youden"

    config.write_text(SMALL.format(ws=ws, policy="youden", label="min_snr = 2.0"))
    assert main(cli) == 0
    done = ran(capsys)
    assert [s for s, what in done.items() if what == "ran"] == ["label", "fetch", "train", "evaluate", "score"]
    assert json.loads((ws / "models" / "paper" / "args.json").read_text())["labels"]["parameters"]["min_snr"] == 2.0


def test_the_config_is_checked_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'workspace = "{tmp_path / "ws"}"\n[train]\nepochs = 0\n')
    with pytest.raises(ConfigError, match="train.epochs must be a positive integer"):
        run_args(load_config(bad))
    bad.write_text(f'workspace = "{tmp_path / "ws"}"\n[score]\nthreshold = 2\n')
    with pytest.raises(ConfigError, match=r"score.threshold must be in \(0, 1\)"):
        run_args(load_config(bad))
    bad.write_text(f'workspace = "{tmp_path / "ws"}"\n[run]\nuntil = "lunch"\n')
    with pytest.raises(ConfigError, match="run.until must be one of ingest, label"):
        run_args(load_config(bad))
    bad.write_bytes(b"\xff\xfeworkspace")
    with pytest.raises(ConfigError, match="is not valid TOML: it is not UTF-8"):
        load_config(bad)
    assert not (tmp_path / "ws").exists()  # nothing ran, nothing was made


def test_the_runs_own_config_chooses_the_cluster(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(f'workspace = "{tmp_path / "ws"}"\n[sky]\nn = 300\n[cluster]\nspec = "local:1"\n')
    assert main(["run", str(config), "--until", "ingest"]) == 0
    assert "dask: local cluster, 1 workers" in capsys.readouterr().err


def test_a_notebook_runs_the_same_with_one_call(tmp_path):
    args = run_args({"workspace": str(tmp_path / "ws"), "sky": {"n": 600, "seed": 2},
                     "fetch": {"size": 64, "image_size": 32}}, until="label")  # fmt: skip
    stages = run_pipeline(args)
    assert [s.name for s in stages] == ["sky", "ingest", "label"] and all(s.ran for s in stages)
    assert [s.ran for s in run_pipeline(args)] == [False, False, False]


def test_demo_end_to_end(tmp_path, capsys):
    ws = tmp_path / "demo"
    assert main(["--quiet", "--workers", "2", "demo", "--n", "1000", "--epochs", "1", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "(paper 0.85), accuracy" in out and f"report  {ws / 'reports' / 'report.md'}" in out and "roc.png" in out
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0 and metrics["test"]["n"] > 0
    scores = read_scores(ws)
    assert len(scores) == 1000 and scores["objid"].is_unique  # every galaxy scored, labelled or not


def test_init_writes_a_config_that_run_accepts(tmp_path):
    path = write_init_config(tmp_path)
    raw = load_config(path)
    assert raw["fetch"]["cutout_url"] == "https://www.legacysurvey.org/viewer/cutout.jpg"
    # the file names its paths relative to itself, and they are read so
    assert tomllib.loads(path.read_text())["ingest"]["inputs"] == ["nsa_v0_1_2.fits"]
    assert raw["fetch"]["rate"] <= 20 and raw["ingest"]["inputs"] == [str(tmp_path / "nsa_v0_1_2.fits")]
    assert raw["workspace"] == str(tmp_path / "nsa-run")
    args = run_args(raw)
    assert args.sky is None and args.score is not None and args.stages[-1] == "score"
    assert args.ingest.workspace.root == tmp_path / "nsa-run"
    with pytest.raises(ConfigError, match="exists; edit it.*--force"):
        write_init_config(tmp_path)
    assert main(["init", str(tmp_path), "--force"]) == 0


def test_run_asks_every_stage_in_the_order_the_config_names_them():
    """`run` drives the stages through their steps; a stage missing from either list would be skipped
    silently, or refused by `--until`."""
    from pipeline.config import RUN_STAGES
    from pipeline.run import STEPS

    assert tuple(STEPS) == RUN_STAGES
    assert all(step.name == name for name, step in STEPS.items())
