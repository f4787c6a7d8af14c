"""The config ``agnsurvey init`` writes: every table ``agnsurvey run`` reads, commented, for the real
NSA v0_1_2 catalog and the real Legacy Surveys cutout service, with polite defaults."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError

INIT_NAME = "agnsurvey.toml"

INIT_CONFIG = """\
# agnsurvey run config: `agnsurvey run agnsurvey.toml` runs ingest -> label -> fetch -> train -> evaluate -> score,
# skipping every stage whose outputs are complete for the same inputs and settings. Flags override this file.
# Relative paths here (workspace, inputs, bricks) are relative to this file's directory, wherever you run from.

workspace = "nsa-run"                 # every output goes here (a shared file system on a cluster)

[cluster]
spec = "local"                        # local | local:N | local-cuda | slurm | tcp://host:8786 | scheduler.json
# n_workers = 4                       # worker processes of a local cluster (default: sized to this machine)
# [cluster.slurm]                     # with spec = "slurm" (pip install 'agnsurvey[hpc]')
# queue = "normal"
# account = "myproject"
# walltime = "04:00:00"
# cores = 16
# memory = "64GiB"
# processes = 4                       # Dask workers per job
# jobs = 4
# job_script_prologue = ["source /path/to/venv/bin/activate"]
# log_directory = "slurm-logs"        # the jobs' output files (default: the directory agnsurvey runs in)
# start_timeout = 600                 # seconds to wait for the first job to start

[ingest]
# NSA v0_1_2 (145,155 galaxies, ~0.5 GB): https://data.sdss.org/sas/dr13/sdss/atlas/v0/nsa_v0_1_2.fits
inputs = ["nsa_v0_1_2.fits"]
radius_column = "PETROTH90"           # arcsec; 3 radii frame the whole galaxy
# [ingest.columns]                    # canonical name = source column, for catalogs not in the NSA layout
# ha_flux = "h_alpha_flux"

[label]
scheme = "paper"                      # paper | kewley2001 | three-class
# min_snr = 3.0                       # every line needs flux/err >= 3 (Guo et al. 2022); omit for the paper's cut
split = [0.75, 0.15, 0.10]            # train, val, test, by a hash of the id (stable across runs)

[fetch]
cutout_url = "https://www.legacysurvey.org/viewer/cutout.jpg"
layer = "ls-dr10"
size = 250                            # pixels requested; pixscale = radius x 1.5 x 2 / size arcsec/pixel
image_size = 128                      # pixels stored
rate = 10.0                           # requests/s over all workers: the service is shared, be polite
concurrency = 16                      # requests in flight over all workers
retries = 5

[train]
model = "paper"                       # paper (the paper's CNN) | resnet18
epochs = 10
batch_size = 64
# class_weight = "balanced"           # weigh AGN and star-forming equally
# precision = "mixed_bfloat16"        # on GPUs that support it
# on = "workers"                      # driver | workers (default: workers on a cluster of other machines)

[evaluate]
threshold_policy = "balanced"         # chosen on the validation split: balanced | youden | f1 | purity:0.8 | fixed:0.3

[score]
# inputs = ["nsa_v1_0_1.fits"]        # catalogs to score (no emission lines needed); omit: every ingested row
# images = "path"                     # score local image files named in this column instead of fetching
# tta = true                          # average the 8 flips/rotations

# [run]
# until = "evaluate"                  # the last stage to run
"""


def write_init_config(directory: Path | str, force: bool = False) -> Path:
    """Write ``DIR/agnsurvey.toml``; an existing one is kept unless ``force``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / INIT_NAME
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; edit it, choose another directory, or pass --force to replace it")
    path.write_text(INIT_CONFIG)
    return path
