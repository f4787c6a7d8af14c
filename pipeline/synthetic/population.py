"""The NSA-like population's science, as pure functions of a ``numpy.random.Generator``.

- classes: star-forming 63 %, composite 15.5 %, Seyfert 5.5 %, LINER 16 % (:data:`CLASS_FRACTIONS`);
- BPT position first, x = log10([NII]/Hα), y = log10([OIII]/Hβ) (:func:`bpt_positions`), then true
  line fluxes, then noisy observed fluxes with 10-20 % non-positive per line (:func:`line_fluxes`);
- redshift p(z) ∝ z² on [0.005, 0.055]; radii shrinking with distance, AGN hosts more concentrated
  (:func:`radii`); FNugriz photometry with redder AGN hosts (:func:`photometry`);
- positions uniform on the sphere inside :func:`pipeline.synthetic.footprint.in_footprint`.

:mod:`pipeline.synthetic.catalog` draws them block by block and writes the catalog.
"""

from __future__ import annotations

import numpy as np

from pipeline.synthetic.footprint import footprint_area_deg2, in_footprint

CLASS_FRACTIONS: tuple[float, ...] = (0.63, 0.155, 0.055, 0.16)
SF, COMPOSITE, SEYFERT, LINER = 0, 1, 2, 3

BANDS = "FNugriz"  # NSA order of the 7-element photometry arrays: GALEX FUV, NUV, SDSS ugriz
Z_MIN, Z_MAX = 0.005, 0.055
C_KM_S, H0 = 299_792.458, 70.0  # speed of light (km/s), Hubble constant (km/s/Mpc)
SENTINEL = -9999.0
LINES = ("HA", "N2", "HB", "O3")


def kauffmann03(x: np.ndarray) -> np.ndarray:
    """Kauffmann et al. (2003) empirical star-forming limit y = 0.61/(x - 0.05) + 1.3 (dex)."""
    return 0.61 / (x - 0.05) + 1.3


def kewley01(x: np.ndarray) -> np.ndarray:
    """Kewley et al. (2001) maximum-starburst line y = 0.61/(x - 0.47) + 1.19 (dex)."""
    return 0.61 / (x - 0.47) + 1.19


def draw_classes(rng: np.random.Generator, n: int) -> np.ndarray:
    """True classes (int16: 0 SF, 1 composite, 2 Seyfert, 3 LINER) drawn with CLASS_FRACTIONS."""
    return rng.choice(len(CLASS_FRACTIONS), size=n, p=CLASS_FRACTIONS).astype(np.int16)


_SF_OFFSET, _SF_SCATTER = 0.40, 0.07  # dex below the Kauffmann line; perpendicular scatter


def bpt_positions(rng: np.random.Generator, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True BPT coordinates x = log10([NII]/Hα), y = log10([OIII]/Hβ) (dex) for each class code.

    Star-forming: along a ridge 0.40 dex (vertically) below the Kauffmann line, x in [-1.3, -0.2]
    peaking near -0.45, with 0.07 dex scatter perpendicular to the line (~5 % cross it).
    Composite: between the Kauffmann and Kewley lines around x ~ -0.15 ± 0.09, plus 0.05 dex
    scatter in y. Seyfert: x ~ 0.08 ± 0.14, y ~ 0.72 ± 0.17. LINER: x ~ 0.15 ± 0.11,
    y ~ -0.02 ± 0.14. The clouds overlap a little across the dividing lines, as real ones do.
    """
    n = cls.size
    x = np.empty(n)
    y = np.empty(n)

    sf = cls == SF
    k = int(sf.sum())
    x0 = -1.3 + 1.1 * rng.beta(6.0, 2.5, k)
    y0 = kauffmann03(x0) - _SF_OFFSET
    slope = -0.61 / (x0 - 0.05) ** 2  # dy/dx of the Kauffmann line
    d = rng.normal(0.0, _SF_SCATTER, k) / np.sqrt(1.0 + slope**2)
    x[sf] = x0 - slope * d
    y[sf] = y0 + d

    comp = cls == COMPOSITE
    k = int(comp.sum())
    xc = np.clip(rng.normal(-0.15, 0.09, k), -0.4, 0.12)
    lower = np.where(xc < 0.05, np.maximum(kauffmann03(np.minimum(xc, 0.0)), -1.0), -1.0)
    upper = kewley01(xc)
    x[comp] = xc
    y[comp] = lower + (upper - lower) * rng.beta(2.5, 2.5, k) + rng.normal(0.0, 0.05, k)

    sey = cls == SEYFERT
    k = int(sey.sum())
    x[sey] = rng.normal(0.08, 0.14, k)
    y[sey] = rng.normal(0.72, 0.17, k)

    lin = cls == LINER
    k = int(lin.sum())
    x[lin] = rng.normal(0.15, 0.11, k)
    y[lin] = rng.normal(-0.02, 0.14, k)
    return x, y


def redshifts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Redshifts with p(z) ∝ z² (uniform in volume) on [Z_MIN, Z_MAX]."""
    u = rng.random(n)
    return np.cbrt(Z_MIN**3 + u * (Z_MAX**3 - Z_MIN**3))


# Per class (SF, composite, Seyfert, LINER): median log10 Hα flux at z = 0.035 (1e-17 erg/s/cm²)
# and the probability of a "weak-line" galaxy (retired / passive hosts: all lines 10^2-10^4 times
# fainter, i.e. pure noise).
_LOG_HA = np.array([1.95, 1.75, 1.85, 1.35])
_P_WEAK = np.array([0.19, 0.21, 0.16, 0.45])
# Typical 1-sigma noise of each line (1e-17 erg/s/cm²): Hα, [NII], Hβ, [OIII].
_WEAK_DEX = (-4.0, -2.0)  # log10 of the weak-line dimming factor, uniform
_NOISE = {"HA": 5.0, "N2": 4.0, "HB": 2.4, "O3": 2.2}


def line_fluxes(
    rng: np.random.Generator, cls: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> dict[str, np.ndarray]:
    """Observed fluxes and 1-sigma errors (float32, 1e-17 erg/s/cm²) of Hα, [NII], Hβ, [OIII].

    True Hα is lognormal (0.45 dex) around a class median that falls as 1/z; a class-dependent
    fraction of galaxies (16-21 %, LINERs 45 %) has all lines 10^2..10^4 times fainter, i.e.
    below the noise. The Balmer decrement Hα/Hβ is
    2.86 + lognormal (median ~4). [NII] = Hα·10^x, [OIII] = Hβ·10^y. Each error is a lognormal
    around the line's noise level plus 3 % of the flux; observed = true + N(0, error), so weak
    lines come out zero or negative (10-20 % of each line). 0.5 % of rows have all four fluxes
    exactly 0 (no fit), 0.3 % more per line; ~0.02 % of HAFLUX and of N2FLUX (flux and error) hold
    the sentinel -9999. Keys: HAFLUX, HAFLUXERR, N2FLUX, ..., O3FLUXERR.
    """
    n = cls.size
    log_ha = _LOG_HA[cls] - np.log10(z / 0.035) + rng.normal(0.0, 0.45, n)
    weak = rng.random(n) < _P_WEAK[cls]
    log_ha = np.where(weak, log_ha + rng.uniform(*_WEAK_DEX, n), log_ha)
    ha = 10.0**log_ha
    hb = ha / (2.86 + rng.lognormal(np.log(1.1), 0.5, n))
    true = {"HA": ha, "N2": ha * 10.0**x, "HB": hb, "O3": hb * 10.0**y}

    no_fit = rng.random(n) < 0.005
    out: dict[str, np.ndarray] = {}
    for line in LINES:
        flux = true[line]
        err = np.hypot(_NOISE[line] * rng.lognormal(0.0, 0.3, n), 0.03 * flux)
        obs = flux + err * rng.standard_normal(n)
        obs[no_fit | (rng.random(n) < 0.003)] = 0.0
        if line in ("HA", "N2"):
            bad = rng.random(n) < 0.0002
            obs[bad] = SENTINEL
            err[bad] = SENTINEL
        out[f"{line}FLUX"] = obs.astype(np.float32)
        out[f"{line}FLUXERR"] = err.astype(np.float32)
    return out


def radii(rng: np.random.Generator, cls: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """PETROTH50, PETROTH90 and SERSIC_TH50 in arcsec (float32).

    Physical half-light radius lognormal (0.2 dex) around 3.2 kpc (SF), 2.8 (composite),
    2.5 (Seyfert, LINER), seen at distance cz/H0: typically 2-8" (bigger when nearer), at least
    0.8". PETROTH90 = PETROTH50 × concentration (SF 2.35 ± 0.15, composite 2.6 ± 0.2, AGN
    2.95 ± 0.18, at least 1.8); SERSIC_TH50 = PETROTH50 × (1.05 ± 0.08).
    """
    n = cls.size
    r50_kpc = np.array([3.2, 2.8, 2.5, 2.5])[cls] * 10.0 ** rng.normal(0.0, 0.2, n)
    kpc_per_arcsec = (C_KM_S * z / H0) * 1000.0 / 206_264.806
    th50 = np.maximum(r50_kpc / kpc_per_arcsec, 0.8)
    conc = rng.normal(np.array([2.35, 2.6, 2.95, 2.95])[cls], np.array([0.15, 0.2, 0.18, 0.18])[cls])
    th90 = th50 * np.maximum(conc, 1.8)
    sersic = th50 * np.maximum(rng.normal(1.05, 0.08, n), 0.5)
    return {
        "PETROTH50": th50.astype(np.float32),
        "PETROTH90": th90.astype(np.float32),
        "SERSIC_TH50": sersic.astype(np.float32),
    }


# Per class (SF, composite, Seyfert, LINER): mean and scatter of M_r and of the colours.
_MR = (np.array([-20.2, -20.8, -21.0, -21.2]), np.array([0.9, 0.8, 0.8, 0.8]))
_COLOURS = {  # name: (means per class, sigmas per class), magnitudes
    "FUV-NUV": (np.array([0.35, 0.6, 0.8, 1.2]), np.array([0.2, 0.3, 0.3, 0.4])),
    "NUV-r": (np.array([2.6, 3.6, 4.0, 5.0]), np.array([0.6, 0.6, 0.7, 0.5])),
    "u-g": (np.array([1.15, 1.45, 1.5, 1.7]), np.array([0.2, 0.2, 0.2, 0.15])),
    "g-r": (np.array([0.45, 0.62, 0.68, 0.75]), np.array([0.12, 0.1, 0.1, 0.07])),
    "r-i": (np.array([0.22, 0.3, 0.33, 0.36]), np.array([0.06, 0.05, 0.05, 0.05])),
    "i-z": (np.array([0.12, 0.2, 0.22, 0.25]), np.array([0.06, 0.05, 0.05, 0.05])),
}
_SKY_NMGY = np.array([0.4, 0.3, 0.8, 0.15, 0.15, 0.25, 0.8])  # per-band noise floor, FNugriz


def photometry(rng: np.random.Generator, cls: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """ABSMAG (mag), NMGY (nanomaggies) and NMGY_IVAR (nanomaggies⁻²), shape (n, 7), bands FNugriz.

    M_r is normal per class (AGN hosts brighter); colours are normal per class (AGN hosts redder:
    larger NUV-r, g-r, u-g). Apparent flux at luminosity distance (1+z)cz/H0; noise per band is a
    floor plus 2 % of the flux; NMGY is the true flux plus that noise.
    """
    n = cls.size

    def draw(mean_sigma: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return mean_sigma[0][cls] + mean_sigma[1][cls] * rng.standard_normal(n)

    m_r = draw(_MR)
    c = {name: draw(ms) for name, ms in _COLOURS.items()}
    m_g = m_r + c["g-r"]
    m_i = m_r - c["r-i"]
    m_nuv = m_r + c["NUV-r"]
    absmag = np.stack([m_nuv + c["FUV-NUV"], m_nuv, m_g + c["u-g"], m_g, m_r, m_i, m_i - c["i-z"]], axis=1)
    d_l = (1.0 + z) * C_KM_S * z / H0
    dist_mod = 5.0 * np.log10(d_l) + 25.0
    true = 10.0 ** (-0.4 * (absmag + dist_mod[:, None] - 22.5))
    sigma = _SKY_NMGY + 0.02 * true
    nmgy = true + sigma * rng.standard_normal((n, 7))
    return {
        "NMGY": nmgy.astype(np.float32),
        "NMGY_IVAR": (1.0 / sigma**2).astype(np.float32),
        "ABSMAG": absmag.astype(np.float32),
    }


def sky_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(RA, Dec) in degrees, uniform on the sphere and inside the footprint (rejection sampling)."""
    accept = footprint_area_deg2() / 41_252.96
    ra_parts: list[np.ndarray] = []
    dec_parts: list[np.ndarray] = []
    have = 0
    while have < n:
        m = int((n - have) / accept * 1.1) + 64
        ra = rng.random(m) * 360.0
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, m)))
        keep = in_footprint(ra, dec)
        ra_parts.append(ra[keep])
        dec_parts.append(dec[keep])
        have += int(keep.sum())
    return np.concatenate(ra_parts)[:n], np.concatenate(dec_parts)[:n]


def iau_names(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IAUNAME 'JHHMMSS.ss+DDMMSS.s' (S19, truncated, not rounded) and SUBDIR 'HHh/pDD/IAUNAME'.

    SUBDIR's middle part is the Dec rounded down in |Dec| to an even degree, 'p' or 'm' for its
    sign, as in the NSA atlas directory tree. Vectorised: digits are written into a byte matrix.
    """
    n = ra.size
    buf = np.empty((n, 27), dtype=np.uint8)
    cs = np.clip(np.floor(np.mod(ra, 360.0) * 24_000.0).astype(np.int64), 0, 24 * 360_000 - 1)  # 0.01 s
    tenth = np.clip(np.floor(np.abs(dec) * 36_000.0).astype(np.int64), 0, 90 * 36_000)  # 0.1 arcsec
    negative = dec < 0
    hours = cs // 360_000
    dec_deg = tenth // 36_000

    def put(col: int, value: np.ndarray, width: int) -> None:
        for k in range(width):
            buf[:, col + width - 1 - k] = 48 + (value // 10**k) % 10

    put(0, hours, 2)
    buf[:, 2] = ord("h")
    buf[:, 3] = ord("/")
    buf[:, 4] = np.where(negative, ord("m"), ord("p"))
    put(5, dec_deg - dec_deg % 2, 2)
    buf[:, 7] = ord("/")
    buf[:, 8] = ord("J")
    put(9, hours, 2)
    put(11, (cs // 6000) % 60, 2)
    put(13, (cs // 100) % 60, 2)
    buf[:, 15] = ord(".")
    put(16, cs % 100, 2)
    buf[:, 18] = np.where(negative, ord("-"), ord("+"))
    put(19, dec_deg, 2)
    put(21, (tenth // 600) % 60, 2)
    put(23, (tenth // 10) % 60, 2)
    buf[:, 25] = ord(".")
    put(26, tenth % 10, 1)
    subdir = buf.view("S27").ravel()
    iauname = np.ascontiguousarray(buf[:, 8:]).view("S19").ravel()
    return iauname, subdir
