"""The offline cutout service: the Legacy Surveys viewer's JPEG cutout API, on 127.0.0.1.

``agnsurvey sky serve --catalog nsa_sky.fits`` (or, in tests, ``async with CutoutServer(...)``)
answers the same requests as ``https://www.legacysurvey.org/viewer/cutout.jpg``; a client switches
between them by the endpoint URL alone (``CutoutServer.url``: ``http://HOST:PORT/viewer/cutout.jpg``;
``/viewer/jpeg-cutout``, the viewer's older name, works too).

``GET /viewer/cutout.jpg?ra=&dec=&size=&pixscale=&layer=``, like the real service (the query is
parsed and rendered by :mod:`pipeline.synthetic.viewer_api`); ``GET /viewer/cutout.fits?...&bands=grz``
(also ``/viewer/fits-cutout``) answers the same query in flux (``application/fits``: a primary HDU,
float32 (B, H, W) nanomaggies, row 0 south, column 0 east, TAN WCS; all zeros outside the
footprint; unknown bands → 400), with the same faults:

- ``ra``, ``dec`` (degrees) are required: missing, not a number, or |dec| > 90 → HTTP 400, text body;
- ``size`` (pixels) defaults to 256 (``DEFAULT_SIZE``); larger than 3000 (``MAX_SIZE``) is served at
  3000 (as the real service does; a client must check the shape); not a positive
  integer → 400;
- ``pixscale`` (arcsec/pixel) defaults to 0.262 (``DEFAULT_PIXSCALE``); not > 0 → 400;
- ``layer`` is any string (default ``ls-dr10``) and does not change the image; with
  ``ServerConfig.layers`` set, a layer not listed → 400 (the real service rejects unknown layers);
- outside the footprint (:func:`pipeline.synthetic.footprint.in_footprint`) → an all-black JPEG with
  HTTP 200, as the real service answers where it has no data;
- inside: the catalog galaxy nearest the position within ``tolerance_arcsec`` is the target, and
  every galaxy whose light reaches the field is drawn as a neighbour
  (:meth:`SkyIndex.in_field`); no galaxy there → empty sky (noise and neighbours, never black).
  The JPEG is ``encode_jpeg(render_field(target, neighbours, ra, dec, size, pixscale), quality)``:
  the same request always gives the same bytes.

Fault injection (:class:`~pipeline.synthetic.server_config.Faults`, all off by default), decided per
request in this order:

1. ``max_concurrent``: a request arriving while that many are being handled is answered at once
   with 503 and ``Retry-After`` (rejected, not queued; rejected requests do not count as in flight);
2. ``throttle_rate``: a token bucket (``throttle_rate`` tokens/s, ``throttle_burst`` deep); a
   request finding it empty gets 429 with ``Retry-After: retry_after_s``;
3. ``hang_rate``: the connection is held without an answer for ``hang_s``, then dropped (a client
   sees its own timeout, or a disconnect); a closing server drops hung connections at once. Counted
   in ``stats.faults["hang"]`` when it starts, logged (status None) when the connection is dropped;
4. ``error_rate``: 500 or 503 (even odds), text body, no Retry-After;
5. the answer (200 or 400), after ``latency_s`` + uniform(0, ``jitter_s``) (every answer waits
   this long, faults included, except the immediate overload rejection);
6. ``truncate_rate``: a 200's JPEG is cut to 10-90 % of its bytes. ``truncate_mode="body"``: sent
   with a matching Content-Length, so HTTP sees nothing wrong and only decoding the JPEG does
   (no end-of-image marker, Pillow's ``load`` fails); ``"close"``: the full Content-Length is
   announced and the connection closed early (aiohttp raises ``ClientPayloadError``).

The random decisions (3, 4, 6 and the jitter) are a hash of (seed, the request's query, how many
times that query was asked before): reproducible whatever the order of concurrent requests, and a
retry of a failed request draws afresh. Every request is logged (:attr:`CutoutServer.requests`,
:class:`~pipeline.synthetic.viewer_api.RequestRecord`) and counted (:attr:`CutoutServer.stats`,
also ``GET /_offline/stats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from aiohttp import web

from pipeline.errors import ConfigError
from pipeline.synthetic.footprint import in_footprint
from pipeline.synthetic.server_config import ServerConfig
from pipeline.synthetic.skyindex import SkyIndex
from pipeline.synthetic.viewer_api import (
    CUTOUT_PATH,
    CUTOUT_PATHS,
    FITS_PATHS,
    STATS_PATH,
    BadRequest,
    CutoutQuery,
    RequestRecord,
    ServerStats,
    black_jpeg,
    parse_bands,
    parse_query,
    render_cutout,
    render_fits_cutout,
    retry_after_value,
    zero_fits,
)


class _TokenBucket:
    """The throttle fault: ``rate`` tokens a second, ``burst`` deep; a request takes one."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.last = float(burst), time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class CutoutServer:
    """The offline cutout service, in-process: ``async with CutoutServer(config) as server: ...``.

    ``index``: serve this :class:`SkyIndex` instead of loading ``config.catalog``.
    After start: ``url`` (the cutout endpoint, ``http://HOST:PORT/viewer/cutout.jpg``),
    ``base_url``, ``port``, ``requests`` (the log), ``stats`` (counters), ``index``.
    """

    def __init__(self, config: ServerConfig | None = None, *, index: SkyIndex | None = None):
        self.config = config or ServerConfig()
        if index is None and self.config.catalog is None:
            raise ConfigError("the cutout server needs a catalog: give --catalog PATH (e.g. WS/sky/nsa_sky.fits)")
        self.index: SkyIndex | None = index
        self.requests: deque[RequestRecord] = deque(maxlen=self.config.log_limit)
        self.stats = ServerStats()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._pool: Executor | None = None
        self._closing = asyncio.Event()
        self._seq = 0
        self._in_flight = 0
        self._attempts: dict[int, int] = {}
        faults = self.config.faults
        self._bucket = _TokenBucket(faults.throttle_rate, faults.burst) if faults.throttle_rate else None
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cache_bytes = 0

    # --- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> CutoutServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Load the catalog (unless given an index), start the render pool and listen."""
        cfg = self.config
        if self.index is None:
            self.index = await asyncio.to_thread(
                SkyIndex.from_catalog, cfg.catalog, columns=cfg.columns, radius_column=cfg.radius_column
            )
        workers = cfg.workers or min(8, os.cpu_count() or 1)
        if cfg.executor == "process":
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cutout-render")
        self._closing = asyncio.Event()
        app = web.Application()
        for path in CUTOUT_PATHS + FITS_PATHS:
            app.router.add_get(path, self._handle)
        app.router.add_get(STATS_PATH, self._stats)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._pool.shutdown(wait=False)
            raise ConfigError(
                f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); pick another --port (0: any free one)"
            ) from None
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Stop listening, drop hung connections, wait for answers in progress, stop the pool."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the cutout server is not started; use 'async with CutoutServer(...)'")
        return self._port

    @property
    def base_url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The cutout endpoint, the offline twin of :data:`~pipeline.synthetic.viewer_api.REAL_CUTOUT_URL`."""
        return self.base_url + CUTOUT_PATH

    def clear_log(self) -> None:
        """Forget the request log and counters (the throttle bucket and attempt counts stay)."""
        self.requests.clear()
        self.stats = ServerStats()

    # --- handlers ---------------------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        body = {"url": self.url, "galaxies": len(self.index or ()), "fault_config": self.config.faults.active()}
        body.update(self.stats.to_dict())
        body["in_flight"] = self._in_flight
        return web.json_response(body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        self._seq += 1
        seq = self._seq
        faults = self.config.faults
        self.stats.requests += 1
        rec: dict[str, Any] = {
            "seq": seq,
            "t_start": t0,
            "path": request.path,
            "query": request.query_string,
            "status": None,
            "fault": None,
            "outcome": None,
            "objid": None,
            "size": None,
            "bytes": 0,
            "delay_s": 0.0,
            "in_flight": self._in_flight + 1,
            "retry_after": None,
        }
        if faults.max_concurrent is not None and self._in_flight >= faults.max_concurrent:
            rec["fault"] = "overload"
            resp = self._text(503, "503 Service Unavailable: too many concurrent requests", faults.retry_after_s)
            return self._finish(rec, resp)

        self._in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
        try:
            return await self._answer(request, rec)
        finally:
            self._in_flight -= 1

    async def _answer(self, request: web.Request, rec: dict[str, Any]) -> web.StreamResponse:
        faults = self.config.faults
        draw = self._drawer(request)
        if self._bucket is not None and not self._bucket.take(rec["t_start"]):
            rec["fault"] = "throttle"
        elif faults.hang_rate and draw("hang") < faults.hang_rate:
            rec["fault"] = "hang"
            self.stats.faults["hang"] += 1  # counted now; logged when the connection is dropped
        elif faults.error_rate and draw("error") < faults.error_rate:
            rec["fault"] = "error"

        delay = faults.latency_s + (faults.jitter_s * draw("jitter") if faults.jitter_s else 0.0)
        if delay > 0:
            rec["delay_s"] = delay
            self.stats.delayed += 1
            await self._pause(delay)

        if rec["fault"] == "throttle":
            return self._finish(rec, self._text(429, "429 Too Many Requests", faults.retry_after_s))
        if rec["fault"] == "hang":
            await self._pause(faults.hang_s)
            if request.transport is not None:
                request.transport.close()
            return self._finish(rec, None)
        if rec["fault"] == "error":
            status = 500 if draw("error-status") < 0.5 else 503
            return self._finish(rec, self._text(status, f"{status} injected server error"))

        try:
            query = parse_query(request.query, self.config.layers)
            bands = parse_bands(request.query) if request.path in FITS_PATHS else None
        except BadRequest as exc:
            rec["outcome"] = "bad_request"
            return self._finish(rec, self._text(400, f"400 Bad Request: {exc}"))
        rec["size"] = query.size
        if query.clipped:
            self.stats.size_clipped += 1
        body, rec["outcome"], rec["objid"] = await self._body(query, bands)
        content_type = "image/jpeg" if bands is None else "application/fits"

        if faults.truncate_rate and draw("truncate") < faults.truncate_rate:
            rec["fault"] = "truncate"
            cut = max(1, min(len(body) - 1, int(len(body) * (0.1 + 0.8 * draw("truncate-at")))))
            if faults.truncate_mode == "close":
                resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
                resp.content_length = len(body)
                await resp.prepare(request)
                await resp.write(body[:cut])
                rec["bytes"] = cut
                if request.transport is not None:
                    request.transport.close()
                return self._finish(rec, resp, sent=cut)
            body = body[:cut]
        return self._finish(rec, web.Response(body=body, content_type=content_type))

    async def _body(self, q: CutoutQuery, bands: str | None) -> tuple[bytes, str, int | None]:
        """(JPEG, or FITS of ``bands`` when given; outcome; target objid) for a valid query; rendered in
        the pool, cached."""
        assert self.index is not None and self._pool is not None
        quality = self.config.jpeg_quality
        loop = asyncio.get_running_loop()
        if not bool(in_footprint(q.ra, q.dec)):
            if bands is not None:
                blank = await loop.run_in_executor(self._pool, zero_fits, q.size, q.pixscale, q.ra, q.dec, bands)
                return blank, "outside", None
            return await loop.run_in_executor(self._pool, black_jpeg, q.size, quality), "outside", None
        target = self.index.nearest(q.ra, q.dec, self.config.tolerance_arcsec)
        objid = None if target is None else int(self.index.objid[target])
        outcome = "empty" if target is None else "galaxy"
        key = (q.ra, q.dec, q.size, q.pixscale, bands)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.stats.cache_hits += 1
            return cached, outcome, objid
        half_width_deg = q.size * q.pixscale / 2.0 / 3600.0
        near = [int(i) for i in self.index.in_field(q.ra, q.dec, half_width_deg) if i != target]
        neighbours = tuple(self.index.galaxy(i) for i in near[: self.config.max_neighbours])
        galaxy = None if target is None else self.index.galaxy(target)
        if bands is None:
            job = (render_cutout, galaxy, neighbours, q.ra, q.dec, q.size, q.pixscale, quality)
        else:
            job = (render_fits_cutout, galaxy, neighbours, q.ra, q.dec, q.size, q.pixscale, bands)
        body, seconds = await loop.run_in_executor(self._pool, *job)
        self.stats.renders += 1
        self.stats.render_s += seconds
        self._remember(key, body)
        return body, outcome, objid

    def _remember(self, key: tuple, body: bytes) -> None:
        limit = int(self.config.cache_mb * 1e6)
        if len(body) > limit:
            return
        self._cache[key] = body
        self._cache_bytes += len(body)
        while self._cache_bytes > limit:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    def _drawer(self, request: web.Request) -> Callable[[str], float]:
        """u(kind) in [0, 1): a hash of (seed, kind, canonical query, attempt number of that query)."""
        if not self.config.faults.random:
            return lambda kind: 0.0
        canonical = urlencode(sorted(request.query.items()))
        digest = hashlib.blake2b(f"{request.path}?{canonical}".encode(), digest_size=8).digest()
        qkey = int.from_bytes(digest, "little")
        attempt = self._attempts.get(qkey, 0)
        self._attempts[qkey] = attempt + 1
        prefix = f"{self.config.seed}\0{qkey}\0{attempt}\0"

        def draw(kind: str) -> float:
            h = hashlib.blake2b((prefix + kind).encode(), digest_size=8).digest()
            return int.from_bytes(h, "little") / 2.0**64

        return draw

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the server is closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _text(self, status: int, text: str, retry_after: float | None = None) -> web.Response:
        headers = {"Retry-After": retry_after_value(retry_after)} if retry_after is not None else None
        return web.Response(status=status, text=text + "\n", headers=headers)

    def _finish(
        self, rec: dict[str, Any], resp: web.StreamResponse | None, sent: int | None = None
    ) -> web.StreamResponse:
        """Count and log the request; ``resp`` None: no answer (the connection was dropped)."""
        if resp is not None:
            rec["status"] = resp.status
            rec["retry_after"] = resp.headers.get("Retry-After")
            if sent is not None:
                rec["bytes"] = sent
            elif isinstance(resp, web.Response) and resp.body is not None:
                rec["bytes"] = len(resp.body)  # type: ignore[arg-type]
        rec["t_end"] = time.monotonic()
        stats = self.stats
        stats.status[rec["status"] if rec["status"] is not None else "none"] += 1
        if rec["fault"] is not None and rec["fault"] != "hang":
            name = rec["fault"] if rec["fault"] != "error" else f"error_{rec['status']}"
            stats.faults[name] += 1
        if rec["outcome"] is not None:
            stats.outcomes[rec["outcome"]] += 1
        stats.bytes_sent += rec["bytes"]
        self.requests.append(RequestRecord(**rec))
        if resp is None:
            return web.Response(status=204)  # never reaches the client: its connection is closed
        return resp


def serve(config: ServerConfig, url_file: Path | str | None = None, out: TextIO | None = None) -> ServerStats:
    """Run the server until Ctrl-C / SIGTERM (``agnsurvey sky serve``); returns the final counters.

    Prints the endpoint URL once listening (and writes it to ``url_file`` if given, so a script that
    asked for port 0 can find it); on stop, prints the counters.
    """
    out = out or sys.stdout
    try:
        return asyncio.run(_serve(config, url_file, out))
    except KeyboardInterrupt:  # a second Ctrl-C, or a platform without signal handlers
        return ServerStats()


async def _serve(config: ServerConfig, url_file: Path | str | None, out: TextIO) -> ServerStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
            loop.add_signal_handler(sig, stop.set)
    print(f"loading {config.catalog} ...", file=out, flush=True)
    async with CutoutServer(config) as server:
        index = server.index
        assert index is not None
        dropped = f" ({', '.join(f'{n} {why}' for why, n in index.dropped.items())} dropped)" if index.dropped else ""
        faults = config.faults.active()
        print(f"serving {len(index):,} galaxies{dropped}", file=out)
        print(f"faults: {json.dumps(faults) if faults else 'none'}", file=out)
        print(f"cutout URL: {server.url}", file=out)
        print(f"counters:   {server.base_url}{STATS_PATH}    (Ctrl-C to stop)", file=out, flush=True)
        if url_file is not None:
            tmp = Path(f"{url_file}.tmp")
            tmp.write_text(server.url + "\n")
            os.replace(tmp, url_file)
        try:
            await stop.wait()
        finally:
            stats = server.stats
    print(f"stopped; {json.dumps(stats.to_dict())}", file=out, flush=True)
    return stats


@contextlib.contextmanager
def serve_in_background(config: ServerConfig, index: SkyIndex | None = None) -> Iterator[CutoutServer]:
    """Run a :class:`CutoutServer` on its own event loop in a daemon thread; yield it once listening.

    For callers that are not async themselves (``agnsurvey run``, tests that drive a blocking
    client): ``server.url`` is the endpoint; ``server.requests`` and ``server.stats`` are safe to read
    after the block or once the client is done.
    """
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> None:
        try:
            server = CutoutServer(config, index=index)
            await server.start()
        except BaseException as exc:  # reported to the caller's thread
            ready["error"] = exc
            started.set()
            return
        ready["server"], ready["stop"] = server, asyncio.Event()
        started.set()
        try:
            await ready["stop"].wait()
        finally:
            await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="cutout-server", daemon=True)
    thread.start()
    started.wait()
    if "error" in ready:
        thread.join()
        raise ready["error"]
    try:
        yield ready["server"]
    finally:
        loop.call_soon_threadsafe(ready["stop"].set)
        thread.join(30)
        loop.close()
