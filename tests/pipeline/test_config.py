"""Config: TOML + overrides, validated at load with messages that name the key and the fix."""

import pytest

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.config import build, load_config
from pipeline.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "agnsurvey.toml"
    path.write_text(text)
    return path


def test_file_values_and_cli_overrides(tmp_path):
    raw = load_config(
        write(
            tmp_path,
            'workspace = "ws"\n[label]\nscheme = "three-class"\nmin_snr = 3\n'
            '[ingest]\nmax_rows = 1000\n[ingest.columns]\nha_flux = "H_ALPHA"\n',
        )
    )
    args = build(LabelArgs, raw, "label", min_snr=5.0, scheme=None)
    assert args.scheme == "three-class" and args.min_snr == 5.0 and args.workspace.root.name == "ws"
    ingest = build(IngestArgs, raw, "ingest", inputs=("a.fits",), columns={"hb_flux": "H_BETA"})
    assert ingest.columns == {"ha_flux": "H_ALPHA", "hb_flux": "H_BETA"} and ingest.max_rows == 1000


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[label]\nschem = 'paper'\n", r"unknown key label.schem; known keys of \[label\]: .*scheme"),
        ("[label]\nmin_snr = 'high'\n", r"label.min_snr = 'high' has the wrong type; expected float"),
        ("[ingest]\nmax_rows = 1.5\n", r"ingest.max_rows = 1.5 has the wrong type; expected int"),
        ("[labels]\n", r"unknown key 'labels'"),
        ("[ingest]\nshard_rows = 1000\n", r"unknown key ingest.shard_rows \(renamed: .* ingest.max_rows rows\)"),
        ("[label\n", r"is not valid TOML"),
        ("[label]\nscheme = 'baldwin'\n", r"label.scheme = 'baldwin' has the wrong type; expected one of 'paper'"),
    ],
)
def test_bad_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_snr": -1.0}, r"label.min_snr must be > 0 \(got -1.0\); omit it for no S/N cut"),
        ({"split": (0.5, 0.2, 0.2)}, r"label.split must be three fractions .* summing to 1"),
        ({"scheme": "kewley"}, r"label.scheme must be one of paper, kewley2001, three-class"),
    ],
)
def test_label_args_validation(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LabelArgs(workspace=tmp_path, **kwargs)


def test_ingest_args_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown canonical column 'halpha'"):
        IngestArgs(workspace=tmp_path, inputs=("a",), columns={"halpha": "X"})
    with pytest.raises(ConfigError, match=r"ingest.max_rows must be a positive integer"):
        IngestArgs(workspace=tmp_path, inputs=("a",), max_rows=0)
    with pytest.raises(ConfigError, match=r"at least one catalog"):
        IngestArgs(workspace=tmp_path, inputs=())


def test_missing_workspace(tmp_path):
    with pytest.raises(ConfigError, match=r"missing workspace: give --workspace"):
        build(LabelArgs, {}, "label")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "nope.toml")


def test_fixed_length_lists_and_workspace_type(tmp_path):
    with pytest.raises(ConfigError, match=r"fetch.pixscale_bounds = \[0.5\] has the wrong type; expected a list of 2"):
        load_config(write(tmp_path, "[fetch]\npixscale_bounds = [0.5]\n"))
    with pytest.raises(ConfigError, match=r"workspace = 5 must be a path in quotes"):
        load_config(write(tmp_path, "workspace = 5\n"))


def test_workspace_must_be_a_local_directory(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"is a file; give a directory"):
        LabelArgs(workspace=tmp_path / "afile")
    with pytest.raises(ConfigError, match=r"only local paths are supported"):
        LabelArgs(workspace="s3://bucket/ws")


def test_paths_in_a_config_are_relative_to_its_file(tmp_path, monkeypatch):
    """Run from anywhere, a config means the files beside it; absolute paths and URLs are kept."""
    (tmp_path / "site").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    raw = load_config(write(tmp_path / "site", 'workspace = "ws"\n[ingest]\ninputs = ["nsa.fits", "/data/v1.fits"]\n'
                            '[fetch]\ncutout_url = "http://x/viewer/cutout.jpg"\nbricks = "s3://bucket/dr10"\n'
                            '[score]\ninputs = ["../other/new.parquet"]\n'
                            '[cluster]\nspec = "slurm"\n[cluster.slurm]\nlog_directory = "logs"\ncores = 2\n'
                            ))  # fmt: skip
    site = tmp_path / "site"
    assert raw["workspace"] == str(site / "ws")
    assert raw["ingest"]["inputs"] == [str(site / "nsa.fits"), "/data/v1.fits"]
    assert raw["fetch"]["bricks"] == "s3://bucket/dr10" and raw["fetch"]["cutout_url"] == "http://x/viewer/cutout.jpg"
    assert raw["score"]["inputs"] == [str(site / "../other/new.parquet")]
    assert raw["cluster"]["slurm"] == {"log_directory": str(site / "logs"), "cores": 2}
    assert build(LabelArgs, raw, "label").workspace.root == site / "ws"
