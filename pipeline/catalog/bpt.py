"""The [NII] BPT diagram: line ratios, dividing lines and class codes. Pure numpy, no I/O.

x = log10([NII] 6584 / Hα), y = log10([OIII] 5007 / Hβ). A point exactly on a dividing line
counts as the class above the line (the lines' ``<`` is strict).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Scheme = Literal["paper", "kewley2001", "three-class"]

SF, COMPOSITE, AGN = np.int8(0), np.int8(1), np.int8(2)
CLASS_NAMES: dict[int, str] = {0: "sf", 1: "composite", 2: "agn"}
LABEL_OF_CLASS = np.array([0, -1, 1], dtype=np.int8)  # sf → 0, composite → -1, agn → 1

KAUFFMANN_ASYMPTOTE = 0.05
KEWLEY_ASYMPTOTE = 0.47
PAPER_X_LIMIT = -0.1


def log_ratios(nii: np.ndarray, ha: np.ndarray, oiii: np.ndarray, hb: np.ndarray) -> tuple[np.ndarray, ...]:
    """(x, y) = (log10 [NII]/Hα, log10 [OIII]/Hβ) for positive fluxes (any common unit)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log10(np.asarray(nii, dtype=np.float64) / np.asarray(ha, dtype=np.float64))
        y = np.log10(np.asarray(oiii, dtype=np.float64) / np.asarray(hb, dtype=np.float64))
    return x, y


def kauffmann2003(x: np.ndarray) -> np.ndarray:
    """Kauffmann et al. (2003) empirical star-forming limit, y = 0.61/(x - 0.05) + 1.3 (x < 0.05)."""
    with np.errstate(divide="ignore"):
        return 0.61 / (np.asarray(x, dtype=np.float64) - KAUFFMANN_ASYMPTOTE) + 1.3


def kewley2001(x: np.ndarray) -> np.ndarray:
    """Kewley et al. (2001) maximum-starburst line, y = 0.61/(x - 0.47) + 1.19 (x < 0.47)."""
    with np.errstate(divide="ignore"):
        return 0.61 / (np.asarray(x, dtype=np.float64) - KEWLEY_ASYMPTOTE) + 1.19


def bpt_class(x: np.ndarray, y: np.ndarray, scheme: Scheme = "paper") -> np.ndarray:
    """Class codes (SF=0, COMPOSITE=1, AGN=2) for BPT coordinates x, y (finite floats).

    "paper": SF iff y < 0.61/(x - 0.05) + 1.3 and x < -0.1, else AGN (no composites).
    "kewley2001": SF iff y < 0.61/(x - 0.47) + 1.19 and x < 0.47, else AGN.
    "three-class": SF below Kauffmann (x < 0.05), AGN on/above Kewley (or x >= 0.47),
    composite between.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    below_kauffmann = (x < KAUFFMANN_ASYMPTOTE) & (y < kauffmann2003(x))
    below_kewley = (x < KEWLEY_ASYMPTOTE) & (y < kewley2001(x))
    if scheme == "paper":
        return np.where(below_kauffmann & (x < PAPER_X_LIMIT), SF, AGN).astype(np.int8)
    if scheme == "kewley2001":
        return np.where(below_kewley, SF, AGN).astype(np.int8)
    if scheme == "three-class":
        return np.where(below_kauffmann, SF, np.where(below_kewley, COMPOSITE, AGN)).astype(np.int8)
    raise ValueError(f"unknown BPT scheme {scheme!r}; use paper, kewley2001 or three-class")


def training_label(classes: np.ndarray) -> np.ndarray:
    """int8 training label of class codes: 0 SF, 1 AGN (the positive class), -1 composite."""
    return LABEL_OF_CLASS[np.asarray(classes, dtype=np.intp)]
