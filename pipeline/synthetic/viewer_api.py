"""The viewer's cutout API, as the offline server speaks it: query parsing, rendering, the request log."""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import parse_qsl

import numpy as np

from pipeline.synthetic.render import Galaxy, check_bands, encode_jpeg, render_field, render_flux

CUTOUT_PATH = "/viewer/cutout.jpg"
CUTOUT_PATHS: tuple[str, ...] = (CUTOUT_PATH, "/viewer/jpeg-cutout")
FITS_PATH = "/viewer/cutout.fits"
FITS_PATHS: tuple[str, ...] = (FITS_PATH, "/viewer/fits-cutout")
DEFAULT_BANDS = "grz"
STATS_PATH = "/_offline/stats"
REAL_CUTOUT_URL = "https://www.legacysurvey.org/viewer/cutout.jpg"
DEFAULT_SIZE = 256
MAX_SIZE = 3000
DEFAULT_PIXSCALE = 0.262  # arcsec/pixel, the Legacy Surveys' native scale
DEFAULT_LAYER = "ls-dr10"

FaultName = Literal["overload", "throttle", "hang", "error", "truncate"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it. Times are ``time.monotonic()`` of the server process.

    ``status`` None: no answer (hung then dropped, or the client went away). ``fault``: the injected
    fault, if any ("overload", "throttle", "hang", "error", "truncate"). ``outcome``: what a 200
    carried ("galaxy", "empty", "outside") or "bad_request". ``delay_s``: injected latency + jitter.
    ``bytes``: body bytes sent. ``in_flight``: requests being handled at arrival, this one included.
    """

    seq: int
    t_start: float
    t_end: float
    path: str
    query: str
    status: int | None
    fault: FaultName | None
    outcome: str | None
    objid: int | None
    size: int | None
    bytes: int
    delay_s: float
    in_flight: int
    retry_after: str | None = None

    @property
    def params(self) -> dict[str, str]:
        """The query parameters (the first of repeated ones, as the handler reads them)."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.query, keep_blank_values=True):
            out.setdefault(key, value)
        return out


@dataclass
class ServerStats:
    """Counters since start: requests, answers by status, faults and outcomes by name, bytes, timing."""

    requests: int = 0
    status: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    delayed: int = 0
    bytes_sent: int = 0
    renders: int = 0
    render_s: float = 0.0
    cache_hits: int = 0
    size_clipped: int = 0
    max_in_flight: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("status", "faults", "outcomes"):
            out[key] = {str(k): v for k, v in sorted(getattr(self, key).items(), key=lambda kv: str(kv[0]))}
        out["render_s"] = round(self.render_s, 4)
        return out


class BadRequest(ValueError):
    """A cutout query the service refuses with HTTP 400 (the message is the response body)."""


@dataclass(frozen=True)
class CutoutQuery:
    ra: float  # degrees, [0, 360)
    dec: float  # degrees
    size: int  # pixels, after the cap
    pixscale: float  # arcsec/pixel
    layer: str
    clipped: bool  # size was above MAX_SIZE


def parse_query(query: Mapping[str, str], layers: tuple[str, ...] | None = None) -> CutoutQuery:
    """Validate a cutout query as the real service does; raise :class:`BadRequest` with the reason."""

    def number(name: str, default: float | None) -> float:
        text = query.get(name, "").strip()
        if not text:
            if default is None:
                raise BadRequest(f"missing required parameter {name}= (degrees)")
            return default
        try:
            value = float(text)
        except ValueError:
            raise BadRequest(f"parameter {name}={text!r} is not a number") from None
        if not math.isfinite(value):
            raise BadRequest(f"parameter {name}={text!r} is not a finite number")
        return value

    ra = number("ra", None) % 360.0
    ra = 0.0 if ra >= 360.0 else ra  # (-1e-17) % 360 == 360.0
    dec = number("dec", None)
    if not -90.0 <= dec <= 90.0:
        raise BadRequest(f"parameter dec={dec!r} is outside [-90, 90]")
    size_text = query.get("size", "").strip()
    try:
        size = int(size_text) if size_text else DEFAULT_SIZE
    except ValueError:
        raise BadRequest(f"parameter size={size_text!r} is not an integer (pixels)") from None
    if size <= 0:
        raise BadRequest(f"parameter size={size} must be a positive number of pixels")
    pixscale = number("pixscale", DEFAULT_PIXSCALE)
    if pixscale <= 0:
        raise BadRequest(f"parameter pixscale={pixscale!r} must be > 0 (arcsec/pixel)")
    layer = query.get("layer", "").strip() or DEFAULT_LAYER
    if layers is not None and layer not in layers:
        raise BadRequest(f"unknown layer {layer!r}; known layers: {', '.join(layers)}")
    return CutoutQuery(ra, dec, min(size, MAX_SIZE), pixscale, layer, size > MAX_SIZE)


def render_cutout(
    target: Galaxy | None,
    neighbours: tuple[Galaxy, ...],
    ra: float,
    dec: float,
    size: int,
    pixscale: float,
    quality: int,
) -> tuple[bytes, float]:
    """(JPEG bytes, seconds spent) of one field: ``encode_jpeg(render_field(...), quality)``."""
    t0 = time.perf_counter()
    image = render_field(target, list(neighbours), ra, dec, size, pixscale)
    return encode_jpeg(image, quality=quality), time.perf_counter() - t0


def parse_bands(query: Mapping[str, str]) -> str:
    """The ``bands=`` of a FITS cutout query (default "grz"); unknown or repeated bands → :class:`BadRequest`."""
    bands = query.get("bands", "").strip() or DEFAULT_BANDS
    try:
        return check_bands(bands)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def fits_bytes(flux: np.ndarray, bands: str, ra: float, dec: float, pixscale: float) -> bytes:
    """A FITS file (primary HDU, float32 (B, H, W) nanomaggies) of a display-oriented flux cutout (H, W, B).

    As FITS stores images: row 0 south (the display rows flipped), column 0 east; TAN WCS centred on
    (ra, dec) degrees with CRPIX (size + 1) / 2, CD1_1 = -pixscale/3600, CD2_2 = +pixscale/3600.
    """
    from astropy.io import fits

    size = flux.shape[0]
    data = np.ascontiguousarray(np.flip(flux, axis=0).transpose(2, 0, 1), dtype=np.float32)
    hdu = fits.PrimaryHDU(data)
    h = hdu.header
    for key, value in (("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", float(ra)), ("CRVAL2", float(dec)),
                       ("CRPIX1", (size + 1) / 2.0), ("CRPIX2", (size + 1) / 2.0), ("CD1_1", -pixscale / 3600.0),
                       ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", pixscale / 3600.0), ("CUNIT1", "deg"),
                       ("CUNIT2", "deg"), ("RADESYS", "ICRS"), ("BUNIT", "nanomaggy"), ("BANDS", bands)):  # fmt: skip
        h[key] = value
    for i, band in enumerate(bands):
        h[f"BAND{i}"] = band
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def render_fits_cutout(
    target: Galaxy | None,
    neighbours: tuple[Galaxy, ...],
    ra: float,
    dec: float,
    size: int,
    pixscale: float,
    bands: str,
) -> tuple[bytes, float]:
    """(FITS bytes, seconds spent) of one field: :func:`fits_bytes` of ``render_flux(...)``."""
    t0 = time.perf_counter()
    flux = render_flux(target, list(neighbours), ra, dec, size, pixscale, bands)
    return fits_bytes(flux, bands, ra, dec, pixscale), time.perf_counter() - t0


def zero_fits(size: int, pixscale: float, ra: float, dec: float, bands: str) -> bytes:
    """The all-zero FITS cutout served outside the footprint (the asked shape and WCS)."""
    return fits_bytes(np.zeros((size, size, len(bands)), np.float32), bands, ra, dec, pixscale)


@lru_cache(maxsize=16)
def black_jpeg(size: int, quality: int) -> bytes:
    """The all-black square JPEG served outside the footprint."""
    return encode_jpeg(np.zeros((size, size, 3), dtype=np.uint8), quality=quality)


def retry_after_value(seconds: float) -> str:
    """Retry-After header value: integer seconds (HTTP) unless a fraction was configured."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
