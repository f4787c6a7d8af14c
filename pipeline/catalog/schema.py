"""The data contract: canonical column names and kinds every stage reads and writes (DESIGN.md).

Source column names (NSA v0_1_2 by default) are mapped onto these once, at ingest
(:mod:`pipeline.catalog.sources`); nothing downstream knows NSA names. Pure constants: no imports
beyond ``typing``, so configuration can name them without loading any data library."""

from __future__ import annotations

from typing import Literal, get_args

Scheme = Literal["paper", "kewley2001", "three-class"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
IdKind = Literal["auto", "int", "string"]
ID_KINDS: tuple[str, ...] = get_args(IdKind)

CANONICAL_COLUMNS: tuple[str, ...] = (
    "objid", "ra", "dec", "z", "radius_arcsec",
    "ha_flux", "nii_flux", "hb_flux", "oiii_flux",
    "ha_flux_err", "nii_flux_err", "hb_flux_err", "oiii_flux_err",
)  # fmt: skip


LINE_COLUMNS: tuple[str, ...] = ("ha_flux", "nii_flux", "hb_flux", "oiii_flux")
ERROR_COLUMNS: tuple[str, ...] = tuple(f"{c}_err" for c in LINE_COLUMNS)
REQUIRED: tuple[str, ...] = ("objid", "ra", "dec")
DEFAULT_RADIUS_COLUMN = "PETROTH90"

NSA_V0_1_2: dict[str, str] = {
    "objid": "NSAID",
    "ra": "RA",
    "dec": "DEC",
    "z": "Z",
    "ha_flux": "HAFLUX",
    "nii_flux": "N2FLUX",
    "hb_flux": "HBFLUX",
    "oiii_flux": "O3FLUX",
    "ha_flux_err": "HAFLUXERR",
    "nii_flux_err": "N2FLUXERR",
    "hb_flux_err": "HBFLUXERR",
    "oiii_flux_err": "O3FLUXERR",
}
# NSA v1_0_1 spells the 90 % Petrosian radius differently; tried when PETROTH90 is absent.
V1_RADIUS_FALLBACKS: tuple[str, ...] = ("PETRO_TH90", "ELPETRO_TH90_R")
V1_SIGNATURE: tuple[str, ...] = ("ELPETRO_TH50_R", "ELPETRO_FLUX", "PETRO_TH50", "ELPETRO_MASS")

FLOAT64_COLUMNS = ("ra", "dec")
FLOAT32_COLUMNS = tuple(c for c in CANONICAL_COLUMNS if c not in ("objid", "ra", "dec"))
