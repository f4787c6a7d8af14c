"""Galaxy renderer for the offline sky: Legacy-Surveys-like g, r, z cutouts of catalog galaxies, in flux.

Units: sizes in pixels, pixscale in arcsec/pixel, positions in degrees, radii in arcsec. Sources
are drawn as surface brightness in units of each band's sky noise of one native (0.262") Legacy
Surveys pixel (planes R = z, G = r, B = g), then turned into flux (:func:`render_flux`):
nanomaggies per output pixel = sigmas × :data:`SIGMA_NMGY` [band] × (pixscale / 0.262)².
The JPEG (:func:`render_field`) is the survey viewer's g, r, z → RGB mapping of that flux
(:func:`pipeline.images.survey_rgb.flux_to_rgb`).

What a field holds (:func:`render_flux`), all of it deterministic:

- every galaxy given (the target and its catalog neighbours), each drawn at its offset from the
  field centre, North up and East left (image x = -ΔRA·cos(Dec), image y = -ΔDec);
- a galaxy is an exponential disk plus a Sérsic bulge (n ~ 2-5), each with its own axis ratio,
  sharing a position angle, plus star-forming knots ("clumps") strung along two spiral arms of the
  disk, plus a nuclear point source. Its profile is evaluated in arcsec, so a field rendered at
  another pixscale shows the same galaxy at another scale;
- per target, sometimes a foreground star (a Moffat point source with wings) and small redder
  background galaxies, placed in arcsec relative to the target;
- PSF blur (FWHM 1.1-1.5", per field) done analytically: radii softened as sqrt(r² + σ²), axis
  ratios rounded as for a Gaussian convolution, knots and point sources drawn already blurred;
- sky noise (:mod:`pipeline.synthetic.sky_noise`) from a cached, pre-generated noise field sliced
  at a deterministic offset, correlated over one native pixel (the viewer interpolates when
  pixscale < 0.262") and averaged down when pixscale > 0.262";
- the JPEG: the viewer's mapping, sky at :data:`SKY_COUNTS` (dark grey, never pure black: black
  means "outside the footprint" in the real service), bright cores saturating.

The class shows only statistically. Every galaxy gets a latent type ``t = agn_weight + N(0, σ_t)``;
bulge fraction, Sérsic index, disk and bulge colours, the nuclear point source and the number of
knots are drawn from distributions whose centres move with ``t`` and which overlap widely
(:func:`_draw_look`). Seeds: ``np.random.default_rng([objid, salt])``, so a galaxy looks the same
wherever and whenever it is drawn, and a field is a pure function of its arguments.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.images.survey_rgb import flux_to_rgb
from pipeline.synthetic.bands import BAND_PLANE, SIGMA_NMGY, check_bands, sigma_to_flux  # noqa: F401 (re-exported)
from pipeline.synthetic.sky_noise import NATIVE_PIXSCALE, sky

SKY_COUNTS = float(flux_to_rgb(np.zeros((1, 1, 3), np.float32), "grz")[0, 0, 0])
"""Output level of an empty sky pixel in the JPEG (uint8 counts, before noise): 32 with the viewer's mapping."""

_BRIGHTNESS = 0.6
"""Scales every source's surface brightness (in sigmas). 0.6: under the viewer's mapping, sky dark grey, disks
visible, most cores short of white; render_auc.py --n 2000 --no-cnn gives logistic 0.854, boosting 0.862
(the old per-band stretch: 0.860, 0.854)."""

PSF_FWHM_RANGE = (1.1, 1.5)  # arcsec, uniform per field
_MOFFAT_BETA = 2.5  # point sources: Moffat profile (1 + r²/α²)^-β, with wings

# Latent type scatter: t = agn_weight + N(0, _TYPE_SCATTER), the knob that sets how separable the
# classes are. With 0.25, on 6000 synthetic-catalog galaxies labelled by the paper's BPT rule
# (250 px cutouts resized to 64 px): the latent t itself scores AUC ~0.95 (the ceiling), a small
# CNN ~0.88, logistic regression on mean colour + concentration ~0.87, colour alone ~0.85.
_TYPE_SCATTER = 0.25

_U64 = (1 << 64) - 1
_SALT_LOOK, _SALT_FIELD, _SALT_EXTRA = 0x10C4, 0xF1E1D, 0xE47A
_EPS = 0.02  # render a source out to where it is fainter than this many noise sigmas


@dataclass(frozen=True)
class Galaxy:
    """What the renderer needs of one catalog galaxy."""

    objid: int
    ra: float  # degrees
    dec: float  # degrees
    radius_arcsec: float  # PETROTH90 (90 % light radius), arcsec
    z: float
    agn_weight: float  # 0 star-forming ... 0.5 composite ... 1 AGN (drives appearance statistically)


# --------------------------------------------------------------------------------------------------
# Class → appearance


def agn_weight_from_fluxes(
    ha: np.ndarray,
    nii: np.ndarray,
    hb: np.ndarray,
    oiii: np.ndarray,
    sim_class: np.ndarray | None = None,
) -> np.ndarray:
    """Appearance weight in {0, 0.5, 1} (float64) from line fluxes (any common units), vectorised.

    Where all four fluxes are finite and > 0, from the BPT position x = log10([NII]/Hα),
    y = log10([OIII]/Hβ): 0 below the Kauffmann (2003) line y = 0.61/(x - 0.05) + 1.3 with
    x < 0.05; 1 on or above the Kewley (2001) line y = 0.61/(x - 0.47) + 1.19, or x >= 0.47;
    0.5 in between. Elsewhere from ``sim_class`` (synthetic truth: 0 SF → 0, 1 composite → 0.5,
    2 Seyfert / 3 LINER → 1, anything else → 0.5) when given, else 0.5.
    """
    ha, nii, hb, oiii = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (ha, nii, hb, oiii)))
    with np.errstate(all="ignore"):
        valid = (ha > 0) & (nii > 0) & (hb > 0) & (oiii > 0)
        valid &= np.isfinite(ha) & np.isfinite(nii) & np.isfinite(hb) & np.isfinite(oiii)
        x = np.log10(np.where(valid, nii / np.where(valid, ha, 1.0), 1.0))
        y = np.log10(np.where(valid, oiii / np.where(valid, hb, 1.0), 1.0))
        below_kauffmann = (x < 0.05) & (y < 0.61 / (x - 0.05) + 1.3)
        above_kewley = (x >= 0.47) | (y >= 0.61 / (x - 0.47) + 1.19)
    bpt = np.where(below_kauffmann, 0.0, np.where(above_kewley, 1.0, 0.5))
    if sim_class is None:
        fallback = np.full(bpt.shape, 0.5)
    else:
        sc = np.broadcast_to(np.asarray(sim_class), bpt.shape)
        with np.errstate(invalid="ignore"):
            fallback = np.select([sc == 0, sc == 1, (sc == 2) | (sc == 3)], [0.0, 0.5, 1.0], 0.5)
    return np.where(valid, bpt, fallback)


@dataclass(frozen=True)
class _Look:
    """One galaxy's appearance, independent of the field: arcsec, noise sigmas, (R, G, B) weights."""

    pa: float  # position angle of the major axes, radians east of north
    disk_h: float  # exponential scale length
    disk_q: float  # axis ratio
    disk_amp: float  # central surface brightness
    disk_rgb: tuple[float, float, float]
    bulge_re: float  # half-light radius
    bulge_n: float  # Sérsic index
    bulge_q: float
    bulge_ie: float  # surface brightness at re
    bulge_rgb: tuple[float, float, float]
    nucleus_flux: float  # total flux (sigma · arcsec²) of the nuclear point source
    nucleus_rgb: tuple[float, float, float]
    clumps: tuple[tuple[float, float, float, float], ...]  # (east, north offset, sigma, flux) each
    clump_rgb: tuple[float, float, float]


def _rgb(g_r: float, r_z: float) -> tuple[float, float, float]:
    """Display weights (R=z, G=r, B=g) of a colour; g-r = 0.55, r-z = 0.35 shows neutral grey."""
    return (10.0 ** (0.4 * (r_z - 0.35)), 1.0, 10.0 ** (-0.4 * (g_r - 0.55)))


def _sersic_b(n: float) -> float:
    """b_n such that re encloses half the light (Ciotti & Bertin 1999 expansion)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _seed(objid: int, salt: int) -> list[int]:
    return [int(objid) & _U64, salt]


def _draw_look(objid: int, agn_weight: float, radius: float) -> _Look:
    """Draw a galaxy's appearance from agn_weight-dependent, overlapping distributions."""
    rng = np.random.default_rng(_seed(objid, _SALT_LOOK))
    g = rng.standard_normal(16)
    u = rng.random(8)
    t = agn_weight + _TYPE_SCATTER * g[0]  # latent type: ~0 star-forming ... ~1 AGN host
    tc = min(max(t, 0.0), 1.0)

    # Morphology: bulge-to-total and Sérsic index grow with t.
    bt = min(max(0.08 + 0.34 * t + 0.07 * g[1], 0.0), 0.85)
    n = min(max(2.5 + 1.2 * t + 0.3 * g[2], 1.5), 5.0)
    cos_i = u[0]
    disk_q = math.sqrt(cos_i * cos_i * (1.0 - 0.14**2) + 0.14**2)
    bulge_q = 0.65 + 0.35 * u[1]
    pa = math.pi * u[2]
    # Both components have their own 90 % light radius near the catalog's.
    disk_h = radius / 3.89 * math.exp(0.08 * g[3])
    bulge_re = radius / 5.0 * math.exp(0.10 * g[4]) * (n / 4.0) ** -0.6

    # Surface brightness (roughly distance independent): the total flux is that of a disk of central
    # SB ~120 sigma; the bulge takes a fraction bt of it, so bulge-dominated disks are fainter.
    total = 2.0 * math.pi * 120.0 * _BRIGHTNESS * 10.0 ** (0.2 * g[5]) * disk_h * disk_h * disk_q
    disk_flux = total * (1.0 - bt)
    disk_amp = disk_flux / (2.0 * math.pi * disk_h * disk_h * disk_q)
    bulge_flux = total * bt
    b = _sersic_b(n)
    sersic_norm = 2.0 * math.pi * n * bulge_re * bulge_re * bulge_q * math.exp(b) * b ** (-2.0 * n) * math.gamma(2 * n)
    bulge_ie = bulge_flux / sersic_norm

    # Colours: redder with t, bulges redder than disks.
    disk_gr = 0.10 * g[6] + 0.14 * t
    disk_rgb = _rgb(0.42 + disk_gr, 0.25 + 0.5 * disk_gr + 0.03 * g[7])
    bulge_rgb = _rgb(0.70 + 0.05 * t + 0.06 * g[8], 0.40 + 0.03 * t + 0.04 * g[9])

    # Nuclear point source: more common and brighter in AGN hosts.
    has_nucleus = u[3] < 0.08 + 0.77 * tc
    nucleus_flux = total * 0.02 * 10.0 ** (0.25 * g[10] + 0.5 * tc) if has_nucleus else 0.0
    nucleus_rgb = _rgb(0.45 + 0.15 * g[11], 0.30 + 0.10 * g[11])

    # Star-forming knots on two logarithmic spiral arms, more of them in star-forming disks.
    k = int(rng.poisson(0.2 + 8.0 * (1.0 - tc)))
    clumps: list[tuple[float, float, float, float]] = []
    if k:
        c = rng.random((k, 4))
        cg = rng.standard_normal((k, 2))
        pitch = 0.3 + 0.3 * u[4]
        phase0 = 2.0 * math.pi * u[5]
        r_disk = disk_h * (0.5 + 2.5 * c[:, 0])
        phi = phase0 + np.log(r_disk / disk_h) / math.tan(pitch) + math.pi * (c[:, 1] < 0.5) + 0.3 * cg[:, 0]
        cu, cv = r_disk * np.cos(phi), r_disk * np.sin(phi) * disk_q  # major, minor axis
        sp, cp = math.sin(pa), math.cos(pa)
        east, north = cu * sp + cv * cp, cu * cp - cv * sp
        sigma = disk_h * (0.06 + 0.08 * c[:, 2])
        flux = disk_flux * 0.02 * 10.0 ** (0.25 * cg[:, 1])
        clumps = [
            (float(e), float(nn), float(s), float(f)) for e, nn, s, f in zip(east, north, sigma, flux, strict=True)
        ]
    clump_rgb = _rgb(0.15 + 0.08 * g[12], 0.05 + 0.08 * g[13])

    return _Look(
        pa=pa,
        disk_h=disk_h,
        disk_q=disk_q,
        disk_amp=disk_amp,
        disk_rgb=disk_rgb,
        bulge_re=bulge_re,
        bulge_n=n,
        bulge_q=bulge_q,
        bulge_ie=bulge_ie,
        bulge_rgb=bulge_rgb,
        nucleus_flux=nucleus_flux,
        nucleus_rgb=nucleus_rgb,
        clumps=tuple(clumps),
        clump_rgb=clump_rgb,
    )


@lru_cache(maxsize=8192)
def _look(objid: int, agn_weight: float, radius: float) -> _Look:
    return _draw_look(objid, agn_weight, radius)


def _background_look(rng: np.random.Generator, radius: float) -> _Look:
    """A small, redder, higher-redshift galaxy: a single blurred exponential disk."""
    g = rng.standard_normal(4)
    u = rng.random(4)
    disk_q = 0.3 + 0.7 * u[0]
    disk_h = radius / 3.89
    amp = 25.0 * _BRIGHTNESS * 10.0 ** (0.25 * g[0])
    rgb = _rgb(0.95 + 0.15 * g[1], 0.55 + 0.10 * g[2])
    return _Look(
        pa=math.pi * u[1],
        disk_h=disk_h,
        disk_q=disk_q,
        disk_amp=amp,
        disk_rgb=rgb,
        bulge_re=disk_h,
        bulge_n=2.0,
        bulge_q=1.0,
        bulge_ie=0.0,
        bulge_rgb=rgb,
        nucleus_flux=0.0,
        nucleus_rgb=rgb,
        clumps=(),
        clump_rgb=rgb,
    )


# --------------------------------------------------------------------------------------------------
# Drawing onto a field


@dataclass(frozen=True)
class _Field:
    size: int
    pixscale: float  # arcsec / pixel
    psf_sigma: float  # arcsec
    eps: float  # noise sigmas: faintest surface brightness drawn
    moffat_alpha: float  # arcsec


def _box(f: _Field, px: float, py: float, reach_arcsec: float) -> tuple[int, int, int, int] | None:
    """Pixel bounds (y0, y1, x0, x1) of a square of half-width reach around (px, py), in the field."""
    half = reach_arcsec / f.pixscale
    x0, x1 = max(int(math.floor(px - half)), 0), min(int(math.ceil(px + half)) + 1, f.size)
    y0, y1 = max(int(math.floor(py - half)), 0), min(int(math.ceil(py + half)) + 1, f.size)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _gauss_1d(centre: float, lo: int, hi: int, pixscale: float, sigma: float) -> np.ndarray:
    d = (np.arange(lo, hi, dtype=np.float32) - np.float32(centre)) * np.float32(pixscale / sigma)
    return np.exp(np.float32(-0.5) * d * d)


def _add_gaussian(layer: np.ndarray, oy: int, ox: int, f: _Field, px: float, py: float, sigma: float, flux: float):
    """Add a round Gaussian (sigma arcsec, total flux) centred on pixel (px, py) to ``layer``.

    ``layer`` covers field pixels [oy:oy+h, ox:ox+w].
    """
    peak = flux / (2.0 * math.pi * sigma * sigma)
    if peak <= f.eps:
        return
    reach = sigma * math.sqrt(2.0 * math.log(peak / f.eps))
    box = _box(f, px, py, reach)
    if box is None:
        return
    y0, y1, x0, x1 = box
    h, w = layer.shape
    y0, y1, x0, x1 = max(y0, oy), min(y1, oy + h), max(x0, ox), min(x1, ox + w)
    if y0 >= y1 or x0 >= x1:
        return
    gy = _gauss_1d(py, y0, y1, f.pixscale, sigma) * np.float32(peak)
    gx = _gauss_1d(px, x0, x1, f.pixscale, sigma)
    layer[y0 - oy : y1 - oy, x0 - ox : x1 - ox] += gy[:, None] * gx[None, :]


def _moffat(f: _Field, px: float, py: float, flux: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """Moffat point source of total flux (sigma · arcsec²) at pixel (px, py), over ``box``."""
    y0, y1, x0, x1 = box
    a2 = f.moffat_alpha * f.moffat_alpha
    peak = flux * (_MOFFAT_BETA - 1.0) / (math.pi * a2)
    k = np.float32(f.pixscale * f.pixscale / a2)
    dy = np.arange(y0, y1, dtype=np.float32) - np.float32(py)
    dx = np.arange(x0, x1, dtype=np.float32) - np.float32(px)
    t = np.add.outer(dy * dy * k + np.float32(1.0), dx * dx * k)
    # (t ** -2.5) * peak, without the slow float power
    out = np.sqrt(t)
    out *= t
    out *= t
    np.reciprocal(out, out=out)
    out *= np.float32(peak)
    return out


def _moffat_reach(f: _Field, flux: float) -> float:
    peak = flux * (_MOFFAT_BETA - 1.0) / (math.pi * f.moffat_alpha**2)
    if peak <= f.eps:
        return 0.0
    return f.moffat_alpha * math.sqrt((peak / f.eps) ** (1.0 / _MOFFAT_BETA) - 1.0)


def _draw_galaxy(img: np.ndarray, f: _Field, look: _Look, px: float, py: float) -> None:
    """Add one galaxy centred on pixel (px, py) to the float image (size, size, 3), in place."""
    s2 = f.psf_sigma * f.psf_sigma
    # Extent: where each component falls below eps, plus the blur.
    reach = 0.0
    if look.disk_amp > f.eps:
        reach = look.disk_h * math.log(look.disk_amp / f.eps)
    b = _sersic_b(look.bulge_n)
    if look.bulge_ie > 0 and look.bulge_ie * math.exp(b) > f.eps:
        reach = max(reach, look.bulge_re * (1.0 + math.log(look.bulge_ie / f.eps) / b) ** look.bulge_n)
    reach = max(reach, _moffat_reach(f, look.nucleus_flux)) + 2.0 * f.psf_sigma
    box = _box(f, px, py, reach)
    if box is None:
        return
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0

    # Rotated coordinates (arcsec): u along the major axis, v along the minor axis.
    ps = f.pixscale
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(px)) * np.float32(ps)
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(py)) * np.float32(ps)
    sp, cp = np.float32(math.sin(look.pa)), np.float32(math.cos(look.pa))
    u = np.add.outer(dy * cp, dx * sp)
    v = np.add.outer(dy * -sp, dx * cp)
    u *= u
    v *= v  # u², v² from here on

    # One 2-D profile per component (one plane of ``stack``), coloured at the end by one matmul.
    has_bulge, has_clumps, has_nucleus = look.bulge_ie > 0, bool(look.clumps), look.nucleus_flux > 0
    stack = np.empty((1 + has_bulge + has_clumps + has_nucleus, h, w), dtype=np.float32)
    colours = [look.disk_rgb]

    # Disk: exp(-sqrt(u² + v²/q² + σ²)/h); blur rounds the ellipse as for Gaussians.
    hd = look.disk_h
    q2 = (look.disk_q**2 * hd * hd + s2) / (hd * hd + s2)
    d = stack[0]
    np.multiply(v, np.float32(1.0 / q2), out=d)
    d += u
    d += np.float32(s2)
    np.sqrt(d, out=d)
    d *= np.float32(-1.0 / hd)
    np.exp(d, out=d)
    d *= np.float32(look.disk_amp)

    # Bulge: Ie·exp(-b((r/re)^(1/n) - 1)), r² = (u² + v²/q² + σ²).
    if has_bulge:
        bl = stack[len(colours)]
        colours.append(look.bulge_rgb)
        re = look.bulge_re
        q2 = (look.bulge_q**2 * re * re + s2) / (re * re + s2)
        np.multiply(v, np.float32(1.0 / q2), out=bl)
        bl += u
        bl += np.float32(s2)
        bl *= np.float32(1.0 / (re * re))
        np.log(bl, out=bl)
        bl *= np.float32(0.5 / look.bulge_n)
        np.exp(bl, out=bl)  # (r/re)^(1/n)
        bl *= np.float32(-b)
        bl += np.float32(b + math.log(look.bulge_ie))
        np.exp(bl, out=bl)

    if has_clumps:
        cl = stack[len(colours)]
        colours.append(look.clump_rgb)
        cl.fill(0.0)
        for east, north, sigma, flux in look.clumps:
            sig = math.sqrt(sigma * sigma + s2)
            _add_gaussian(cl, y0, x0, f, px - east / ps, py - north / ps, sig, flux)
    if has_nucleus:
        nl = stack[len(colours)]
        colours.append(look.nucleus_rgb)
        nl.fill(0.0)
        nb = _box(f, px, py, _moffat_reach(f, look.nucleus_flux))  # inside the galaxy's box
        if nb is not None:
            ny0, ny1, nx0, nx1 = nb
            nl[ny0 - y0 : ny1 - y0, nx0 - x0 : nx1 - x0] = _moffat(f, px, py, look.nucleus_flux, nb)

    rgb = stack.reshape(len(colours), h * w).T @ np.asarray(colours, dtype=np.float32)
    img[y0:y1, x0:x1] += rgb.reshape(h, w, 3)


def _draw_point(img: np.ndarray, f: _Field, px: float, py: float, flux: float, rgb: tuple[float, float, float]):
    box = _box(f, px, py, _moffat_reach(f, flux))
    if box is None:
        return
    y0, y1, x0, x1 = box
    m = _moffat(f, px, py, flux, box)
    img[y0:y1, x0:x1] += (m.reshape(-1, 1) @ np.asarray([rgb], dtype=np.float32)).reshape(y1 - y0, x1 - x0, 3)


# --------------------------------------------------------------------------------------------------
# Public API


def _check_field(ra: float, dec: float, size: int, pixscale: float) -> None:
    if size < 1:
        raise ValueError(f"size must be >= 1 pixel (got {size})")
    if not (math.isfinite(pixscale) and pixscale > 0):
        raise ValueError(f"pixscale must be a positive number of arcsec/pixel (got {pixscale})")
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise ValueError(f"ra, dec must be finite degrees (got {ra}, {dec})")


def _field(rng: np.random.Generator, size: int, pixscale: float) -> _Field:
    """The field's geometry and PSF (one uniform draw from ``rng``: the FWHM)."""
    fwhm = rng.uniform(*PSF_FWHM_RANGE)
    return _Field(
        size=size,
        pixscale=float(pixscale),
        psf_sigma=fwhm / 2.3548,
        eps=_EPS * min(1.0, NATIVE_PIXSCALE / pixscale),
        moffat_alpha=fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / _MOFFAT_BETA) - 1.0)),
    )


def _galaxy_look(g: Galaxy) -> _Look:
    return _look(int(g.objid), _weight(g.agn_weight), _radius(g.radius_arcsec))


def render_sigma(
    target: Galaxy | None, neighbours: list[Galaxy], ra: float, dec: float, size: int, pixscale: float
) -> np.ndarray:
    """(size, size, 3) float32 surface brightness in native-pixel sky sigmas, planes R = z, G = r, B = g.

    The field :func:`render_flux` converts to nanomaggies; noise included. Arguments as there.
    """
    size = int(size)
    _check_field(ra, dec, size, pixscale)
    if target is not None:
        field_rng = np.random.default_rng(_seed(target.objid, _SALT_FIELD))
    else:
        field_rng = np.random.default_rng([round((ra % 360.0) * 1e4), round((dec + 90.0) * 1e4), _SALT_FIELD])
    f = _field(field_rng, size, pixscale)
    img = sky(field_rng, size, pixscale)

    centre = (size - 1) / 2.0
    cos_dec = math.cos(math.radians(dec))

    def pixel(g_ra: float, g_dec: float) -> tuple[float, float]:
        d_ra = (g_ra - ra + 180.0) % 360.0 - 180.0
        return centre - d_ra * cos_dec * 3600.0 / pixscale, centre - (g_dec - dec) * 3600.0 / pixscale

    galaxies = [] if target is None else [target]
    galaxies += [n for n in neighbours if target is None or n.objid != target.objid]
    for g in galaxies:
        px, py = pixel(g.ra, g.dec)
        if not (math.isfinite(px) and math.isfinite(py)):
            continue
        _draw_galaxy(img, f, _galaxy_look(g), px, py)

    if target is not None:
        px, py = pixel(target.ra, target.dec)
        if math.isfinite(px) and math.isfinite(py):
            _draw_extras(img, f, target, px, py)
    return img


def render_flux(
    target: Galaxy | None,
    neighbours: list[Galaxy],
    ra: float,
    dec: float,
    size: int,
    pixscale: float,
    bands: str = "grz",
) -> np.ndarray:
    """Flux (size, size, len(bands)) float32, nanomaggies per output pixel, of the sky centred on (ra, dec).

    ``target``: the galaxy the cutout is of (None: empty sky, its noise and PSF seeded by the
    position rounded to 0.36"). ``neighbours``: other galaxies to draw where they fall (a
    neighbour with the target's objid is skipped). Degrees for positions, arcsec/pixel for
    ``pixscale``; ``bands`` a string of g, r, z in the order wanted (others: ValueError).
    Row 0 north, column 0 east; pixel (x, y) = column, row, centre at ((size-1)/2, (size-1)/2).
    Deterministic per target: the same arguments give the same array, whatever ``bands``.
    """
    check_bands(bands)
    return sigma_to_flux(render_sigma(target, neighbours, ra, dec, size, pixscale), bands, pixscale)


def render_field(
    target: Galaxy | None,
    neighbours: list[Galaxy],
    ra: float,
    dec: float,
    size: int,
    pixscale: float,
) -> np.ndarray:
    """RGB uint8 image (size, size, 3) of the sky centred on (ra, dec), deterministic per target.

    ``flux_to_rgb(render_flux(..., "grz"), "grz", pixscale)``: the viewer's mapping of the flux.
    Arguments as :func:`render_flux`. North up, East left.
    """
    return flux_to_rgb(render_flux(target, neighbours, ra, dec, size, pixscale, "grz"), "grz", pixscale)


def draw_galaxy(img: np.ndarray, g: Galaxy, px: float, py: float, pixscale: float, extras: bool = True) -> None:
    """Add ``g`` to a square sigma image ``img`` (S, S, 3) at pixel (px, py) (column, row; row 0 north),
    in place: the same look, PSF and (with ``extras``) star and background galaxies as the cutout
    of ``g`` draws, at ``pixscale`` arcsec/pixel. Noise is the caller's."""
    if img.ndim != 3 or img.shape[0] != img.shape[1] or img.shape[2] != 3:
        raise ValueError(f"draw_galaxy needs a square (S, S, 3) image (got {img.shape})")
    f = _field(np.random.default_rng(_seed(g.objid, _SALT_FIELD)), img.shape[0], pixscale)
    _draw_galaxy(img, f, _galaxy_look(g), px, py)
    if extras:
        _draw_extras(img, f, g, px, py)


def _weight(w: float) -> float:
    return 0.5 if not math.isfinite(w) else min(max(float(w), 0.0), 1.0)


def _radius(r: float) -> float:
    return 3.0 if not math.isfinite(r) or r <= 0 else max(float(r), 0.3)


def _draw_extras(img: np.ndarray, f: _Field, target: Galaxy, px: float, py: float) -> None:
    """Per target, deterministic: sometimes a foreground star, sometimes small background galaxies."""
    rng = np.random.default_rng(_seed(target.objid, _SALT_EXTRA))
    radius = _radius(target.radius_arcsec)
    u = rng.random(6)

    def place() -> tuple[float, float]:
        r = radius * (0.5 + 1.4 * rng.random())
        phi = 2.0 * math.pi * rng.random()
        return px + r * math.cos(phi) / f.pixscale, py + r * math.sin(phi) / f.pixscale

    if u[0] < 0.30:  # a star: flux log-uniform over 3 dex (faint ... saturated with wings)
        sx, sy = place()
        flux = 30.0 * _BRIGHTNESS * 10.0 ** (3.0 * u[1])
        gr = 0.3 + 1.1 * u[2]
        _draw_point(img, f, sx, sy, flux, _rgb(gr, 0.1 + 0.45 * (gr - 0.3)))
    n_bg = int(u[3] < 0.45) + int(u[4] < 0.15)
    for _ in range(n_bg):
        bx, by = place()
        look = _background_look(rng, radius * (0.08 + 0.15 * rng.random()))
        _draw_galaxy(img, f, look, bx, by)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 image (H, W, 3), as the Legacy Surveys viewer serves."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"encode_jpeg needs a uint8 (H, W, 3) array (got {arr.dtype} {arr.shape})")
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
