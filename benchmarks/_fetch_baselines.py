"""What ``bench_fetch.py`` compares agnsurvey's client with, aimed at the same local server: the
paper's sequential loop (``urllib``, one image after another, each saved) and ``legacystamps``.

Both are measured with the same :class:`_fetch_server.Meter` as agnsurvey's client, and every file
they write is decoded (a wrong answer raises) before their numbers count.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _fetch_server import LAYER, SIZE, Galaxy, Meter, Server

from pipeline.images.decode import decode_jpeg

# --------------------------------------------------------------------------------------------------
# 3. the paper's sequential loop


def sequential_point(urls: list[str], out: Path, meter: Meter) -> dict[str, Any]:
    """GET each URL with the standard library and save the JPEG, one after another."""
    out.mkdir(parents=True, exist_ok=True)
    point: dict[str, Any] = {"method": "sequential urllib + save (paper)", "concurrency": 1, "loops": 1}
    with meter.measure(len(urls), point):
        for i, url in enumerate(urls):
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
            (out / f"{i:06d}.jpg").write_bytes(body)
    check_jpegs(sorted(out.glob("*.jpg")), len(urls), point["method"])
    point["bytes"] = sum(p.stat().st_size for p in out.glob("*.jpg"))
    return point


def check_jpegs(files: list[Path], n: int, method: str) -> None:
    if len(files) != n:
        raise RuntimeError(f"{method}: {len(files)} files written, {n} expected")
    for path in files:
        decode_jpeg(path.read_bytes(), SIZE)  # raises on a wrong answer


# --------------------------------------------------------------------------------------------------
# 4. legacystamps, pointed at the local server

# legacystamps 1.2.2 (legacystamps/legacystamps.py) builds its URL inside ``download`` from a string
# literal, 'https://www.legacysurvey.org/viewer/{mode}-cutout/?ra=..&dec=..&layer=..&pixscale=..&
# bands=..&size=..', and fetches it with ``requests.get(url, stream=True)`` in
# ``FileDownloader.download_file``, both through the module-level name ``requests`` of
# ``legacystamps.legacystamps``. There is no base-URL setting, so we rebind that one name to
# :class:`LocalRequests`: it forwards everything to the real ``requests`` module except ``get`` and
# ``head``, whose URL it rewrites from the real viewer's prefix to the local server's
# (``/viewer/jpeg-cutout/`` → ``http://127.0.0.1:PORT/viewer/jpeg-cutout``; the offline server routes
# the old name without the trailing slash). A URL with any other prefix raises instead of leaving
# the machine. The rebinding is undone afterwards; nothing else in the process is touched.
LEGACYSTAMPS_PREFIX = "https://www.legacysurvey.org/viewer/jpeg-cutout/"


class LocalRequests:
    """Stands in for ``requests`` inside ``legacystamps.legacystamps`` only: real viewer URL → local."""

    def __init__(self, real: Any, local_endpoint: str):
        self._real, self._local = real, local_endpoint
        self.rewritten = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _rewrite(self, url: str) -> str:
        if not url.startswith(LEGACYSTAMPS_PREFIX):
            raise RuntimeError(f"legacystamps asked for {url!r}, not the viewer's JPEG cutout; refusing to go out")
        self.rewritten += 1
        return self._local + url[len(LEGACYSTAMPS_PREFIX) :]

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        return self._real.get(self._rewrite(url), *args, **kwargs)

    def head(self, url: str, *args: Any, **kwargs: Any) -> Any:
        return self._real.head(self._rewrite(url), *args, **kwargs)


def legacystamps_size_deg(g: Galaxy) -> float:
    """The ``size`` (degrees) for which legacystamps asks for SIZE pixels at ``g.pixscale``.

    It computes ``int(size * 3600 / pixscale)``; half a pixel more keeps float rounding from giving
    SIZE - 1. It sends the pixscale rounded to 3 decimals (agnsurvey sends 5): the same field to
    within 0.2 %, a different cache key, so its URLs are warmed separately.
    """
    return (SIZE + 0.5) * g.pixscale / 3600.0


def legacystamps_local_urls(server: Server, gals: Sequence[Galaxy]) -> list[str]:
    """The local twins of the URLs legacystamps will ask for (same parameters, same formatting)."""
    local = server.base + "/viewer/jpeg-cutout"
    return [
        f"{local}?ra={g.ra:f}&dec={g.dec:f}&layer={LAYER}&pixscale={g.pixscale:.3f}&bands=grz"
        f"&size={int(legacystamps_size_deg(g) * 3600 / g.pixscale)}"
        for g in gals
    ]


def ensure_legacystamps() -> tuple[Any | None, dict[str, Any]]:
    """Import legacystamps, pip-installing it into this environment first if needed."""
    info: dict[str, Any] = {"installed_now": False}
    if importlib.util.find_spec("legacystamps") is None:
        print("installing legacystamps into this environment (pip) ...", flush=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "legacystamps"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, info | {"available": False, "reason": f"pip install failed: {exc}"}
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            return None, info | {"available": False, "reason": f"pip install failed: {reason[0]}"}
        info["installed_now"] = True
        importlib.invalidate_caches()
    try:
        module = importlib.import_module("legacystamps.legacystamps")
    except Exception as exc:  # a broken install must not end the benchmark
        return None, info | {"available": False, "reason": f"import failed: {type(exc).__name__}: {exc}"}
    from importlib import metadata

    return module, info | {"available": True, "version": metadata.version("legacystamps")}


def legacystamps_point(module: Any, gals: Sequence[Galaxy], server: Server, out: Path, meter: Meter) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    point: dict[str, Any] = {"method": "legacystamps.download", "concurrency": 1, "loops": 1}
    real = module.requests
    shim = LocalRequests(real, server.base + "/viewer/jpeg-cutout")
    module.requests = shim
    try:
        # it prints the URL and a tqdm bar per image to stdout: kept out of the table, still paid for
        with contextlib.redirect_stdout(io.StringIO()), meter.measure(len(gals), point):
            for g in gals:
                module.download(g.ra, g.dec, "grz", size=legacystamps_size_deg(g), mode="jpeg", layer=LAYER,
                                pixscale=g.pixscale, ddir=str(out))  # fmt: skip
    finally:
        module.requests = real
    if shim.rewritten != len(gals):
        raise RuntimeError(f"legacystamps made {shim.rewritten} requests for {len(gals)} images")
    check_jpegs(sorted(out.glob("*.jpeg")), len(gals), point["method"])
    point["bytes"] = sum(p.stat().st_size for p in out.glob("*.jpeg"))
    return point
