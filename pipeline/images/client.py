"""The async cutout client: many cutout URLs in, one validated, resized image (or a reason) out per URL.

The requests are built by :mod:`pipeline.images.requests` (the viewer's URL API); the answers are
decoded by :mod:`pipeline.images.decode`. The real service and the offline sky differ only in the
base URL.

The client (:func:`fetch_many`) runs in one asyncio loop with one aiohttp session: at most
``concurrency`` requests in flight, request starts spaced by a rate limit (requests/s), retries
with exponential backoff and full jitter on 5xx, timeouts, connection errors and corrupt bodies,
``Retry-After`` honoured on 429 (the whole client pauses: the service is shared by everyone), and a
deadline per image. Every answer is validated: it must decode as JPEG with the requested shape; a
constant image (all black outside the survey footprint) means no coverage.

A client that cannot succeed stops instead of spending every row's deadline: when the service asks
(``Retry-After``) for a longer wait than the deadline of one image, or when the latest answer was a
failure (429s included) for most of the last ``give_up_window`` rows asked for. Rows, not attempts:
the retries of a few bad rows never outweigh the rows that succeeded. Rows not finished then are
``pending`` (a re-run asks for them again), and :attr:`ClientStats.stopped` says why.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime
import email.utils
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pipeline.errors import FetchError
from pipeline.images.decode import decode_fits, decode_jpeg, is_constant, resize, resize_flux
from pipeline.images.outcome import FAILED, NO_COVERAGE, OK, PENDING, Outcome
from pipeline.images.requests import cutout_url

RETRYABLE_HTTP = frozenset({500, 502, 503, 504, 520, 522, 524})


@dataclass(frozen=True)
class ClientSettings:
    """How one asyncio client talks to the service (times in seconds, rate in requests/s)."""

    cutout_url: str
    layer: str = "ls-dr10"
    size: int = 250
    image_size: int = 128
    concurrency: int = 16
    rate: float = 10.0
    retries: int = 5
    timeout_s: float = 30.0
    deadline_s: float = 120.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    give_up_window: int = 50
    give_up_fraction: float = 0.9
    pixels: str = "rgb"  # rgb: JPEG bodies (cutout.jpg); flux: FITS bodies (cutout.fits) of ``bands``
    bands: str = "grz"


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    bytes: int = 0
    seconds_waiting: float = 0.0
    http: dict[int, int] = field(default_factory=dict)
    stopped: str = ""  # why the client stopped before every row was final ("" when it did not)
    recent: list[tuple[str, str]] = field(default_factory=list)  # (url, latest answer) of the last rows
    last_failure: str = ""  # the reason of the latest failed answer, in words


class FailureWindow:
    """The give-up rule: the service is hopeless when, for at least ``fraction`` of the last
    ``window`` rows asked for, the latest answer was a failure. A row's later answer replaces its
    earlier one, so retries of a few bad rows cannot fill the window. Fed one answer at a time by
    a client, or the rows of each finished task by the stage, so that many small tasks add up."""

    def __init__(self, window: int = 50, fraction: float = 0.9):
        self.latest: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.window, self.fraction = max(1, window), fraction
        self.last_failure = ""

    def add(self, answers: Sequence[tuple[str, str]], last_failure: str = "") -> str:
        """Record (row key, '' for a success or the failure's kind), and the latest failure's reason
        in words (quoted when giving up); returns the reason to stop, or ''."""
        self.last_failure = last_failure or self.last_failure
        for key, kind in answers:
            self.latest.pop(key, None)
            self.latest[key] = kind
            if len(self.latest) > self.window:
                self.latest.popitem(last=False)
        failed = [k for k in self.latest.values() if k]
        if len(self.latest) < self.window or len(failed) < self.fraction * self.window:
            return ""
        common = ", ".join(f"{k} x{n}" for k, n in collections.Counter(failed).most_common(3))
        last = f"; the last: {self.last_failure}" if self.last_failure else ""
        return (
            f"the service is failing: the latest answer for {len(failed)} of the last {self.window} cutouts asked "
            f"for was a failure ({common}{last}); stopped asking at {_utc(time.time())}; re-run when it answers again"
        )


class _Pacer:
    """What the client knows of the service: request starts spaced by 1/rate seconds, everyone
    paused after a 429 (Retry-After), and a stop that ends the client (hopeless service)."""

    def __init__(self, rate: float, window: int = 50, fraction: float = 0.9):
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self.next_start = 0.0
        self.paused_until = 0.0
        self.lock = asyncio.Lock()
        self.stopped = ""
        self.stop_event = asyncio.Event()
        self.answers = FailureWindow(window, fraction)

    async def wait(self) -> bool:
        """True when this request may start (a pause that began while waiting is honoured too);
        False once the client has stopped."""
        while not self.stopped:
            async with self.lock:
                now = time.monotonic()
                start = max(now, self.next_start, self.paused_until)
                self.next_start = start + self.interval
            if start > now:
                await self.sleep(start - now)
            if time.monotonic() >= self.paused_until:
                return not self.stopped
        return False

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the client stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout=max(0.0, seconds))

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped = reason
            self.stop_event.set()

    def record(self, url: str, kind: str, reason: str = "") -> None:
        """The answer for one row ('' for a success, else the failure's kind and reason); stop when hopeless."""
        reason = self.answers.add([(url, kind)], reason if kind else "")
        if reason:
            self.stop(reason)


def _utc(epoch: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, ValueError, OSError):  # Retry-After: 99999999999999, or inf
        return "a date beyond the calendar"


def retry_after_seconds(value: str | None, default: float) -> float:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); ``default`` when absent."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


async def _attempt(session: aiohttp.ClientSession, url: str, settings: ClientSettings, pacer: _Pacer,
                   stats: ClientStats, timeout_s: float) -> Outcome:  # fmt: skip
    """One request and the verdict on its answer; ``retry`` says whether another try may help."""
    stats.requests += 1
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            code = response.status
            stats.http[code] = stats.http.get(code, 0) + 1
            if code == 429:
                return _throttled(response.headers.get("Retry-After"), settings, pacer, stats)
            body = await response.read()
            answer = f"{code} {response.content_type or 'no content type'}, {len(body):,} bytes"
            if code in RETRYABLE_HTTP:
                return Outcome(FAILED, reason=f"HTTP {answer}", http_status=code, retry=True, backoff=True,
                               kind=f"HTTP {code}")  # fmt: skip
            if code != 200:
                is_text = response.content_type.startswith("text/")
                text = body[:120].decode("utf-8", "replace").strip() if is_text else ""
                return Outcome(FAILED, reason=f"HTTP {answer}" + (f": {text}" if text else ""), http_status=code,
                               kind=f"HTTP {code}")  # fmt: skip
    except TimeoutError:
        return Outcome(FAILED, reason=f"no answer within {timeout_s:.3g} s", retry=True, backoff=True, kind="timeout")
    except aiohttp.ClientError as exc:
        return Outcome(FAILED, reason=_network_failure(exc), retry=True, backoff=True, kind="connection failed")
    stats.bytes += len(body)
    outcome = await asyncio.to_thread(_judge, body, settings)  # Pillow releases the GIL: decode off the loop
    if outcome.status == FAILED:
        outcome.reason = f"{answer}: {outcome.reason}"
    return outcome


def _throttled(header: str | None, settings: ClientSettings, pacer: _Pacer, stats: ClientStats) -> Outcome:
    """A 429: pause everyone for Retry-After, or stop the client when that is beyond an image's deadline."""
    stats.throttled += 1
    wait = retry_after_seconds(header, settings.backoff_s)
    if wait > settings.deadline_s:
        now = time.time()
        pacer.stop(
            f"the service asked to wait {wait:,.0f} s (HTTP 429, Retry-After: {header}), longer than the "
            f"{settings.deadline_s:g} s deadline of one image; stopped asking at {_utc(now)}; re-run after "
            f"{_utc(now + wait)}"
        )
        return Outcome(PENDING, reason=pacer.stopped, http_status=429)
    pacer.pause(wait)
    return Outcome(FAILED, reason=f"HTTP 429 (Retry-After {wait:g} s)", http_status=429, retry=True, kind="HTTP 429")


def _network_failure(exc: aiohttp.ClientError) -> str:
    """What went wrong on the wire, in words (no Python reprs)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or 'refused'})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection closed in the middle of the body"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects"
    return f"connection failed ({type(exc).__name__})"


def _judge(body: bytes, settings: ClientSettings) -> Outcome:
    """The verdict on a 200's body: ok (decoded, resized), no coverage, or a failure."""
    try:
        if settings.pixels == "flux":
            image = decode_fits(body, settings.size, settings.bands)
        else:
            image = decode_jpeg(body, settings.size)
    except ValueError as exc:  # a truncated body may come out whole next time; a wrong shape will not
        retry = not str(exc).startswith(("shape", "FITS shape", "FITS cutout holds"))
        return Outcome(FAILED, reason=str(exc), http_status=200, retry=retry, backoff=True, kind="bad image")
    if is_constant(image):
        return Outcome(NO_COVERAGE, http_status=200)
    if settings.pixels == "flux":
        return Outcome(OK, resize_flux(image, settings.image_size), http_status=200)
    return Outcome(OK, resize(image, settings.image_size), http_status=200)


async def _fetch_one(
    session: aiohttp.ClientSession,
    url: str,
    settings: ClientSettings,
    pacer: _Pacer,
    slots: asyncio.Semaphore,
    stats: ClientStats,
    rng: random.Random,
) -> Outcome:
    """Try one cutout until it is final, the retries are spent, its deadline has passed or the
    client has stopped (then it is ``pending``: not tried enough to call it failed)."""
    deadline = math.inf  # starts with the first attempt: time queued behind the rate limit is not counted
    outcome = Outcome(FAILED, reason="never attempted")
    attempts, failures = 0, 0  # a 429 costs no retry: it is the service pacing us, bounded by the deadline
    while failures <= settings.retries:
        async with slots:
            if not await pacer.wait():
                return Outcome(PENDING, reason=pacer.stopped, attempts=attempts)
            if attempts == 0:
                deadline = time.monotonic() + settings.deadline_s
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.reason = f"deadline of {settings.deadline_s:g}s passed; last: {outcome.reason}"
                break
            attempts += 1
            outcome = await _attempt(session, url, settings, pacer, stats, min(settings.timeout_s, remaining))
        outcome.attempts = attempts
        if outcome.status != PENDING:
            pacer.record(url, outcome.kind, outcome.reason)
        if not outcome.retry:
            return outcome
        if pacer.stopped:
            return Outcome(PENDING, reason=pacer.stopped, attempts=attempts)
        if outcome.http_status != 429:
            failures += 1
        if failures <= settings.retries:
            stats.retries += 1
            if outcome.backoff:
                delay = min(_backoff(settings, failures, rng), max(0.0, deadline - time.monotonic()))
                stats.seconds_waiting += delay
                await pacer.sleep(delay)
    else:
        outcome.reason = f"gave up after {attempts} attempts; last: {outcome.reason}"
    outcome.retry = False
    return outcome


def _backoff(settings: ClientSettings, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2**(attempt-1))]."""
    return rng.uniform(0, min(settings.max_backoff_s, settings.backoff_s * 2 ** (attempt - 1)))


async def fetch_many(urls: Sequence[str], settings: ClientSettings, seed: int = 0) -> tuple[list[Outcome], ClientStats]:
    """Fetch every URL (one session, bounded concurrency, paced); outcomes in the order of ``urls``."""
    stats = ClientStats()
    pacer = _Pacer(settings.rate, settings.give_up_window, settings.give_up_fraction)
    slots = asyncio.Semaphore(max(1, settings.concurrency))
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=max(1, settings.concurrency), ttl_dns_cache=300)
    headers = {"User-Agent": "agnsurvey (survey-scale AGN classification; polite batch client)"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        tasks = [_fetch_one(session, url, settings, pacer, slots, stats, rng) for url in urls]
        outcomes = await asyncio.gather(*tasks)
    stats.stopped, stats.recent = pacer.stopped, list(pacer.answers.latest.items())
    stats.last_failure = pacer.answers.last_failure
    return list(outcomes), stats


def run_async(coro: Any) -> Any:
    """``asyncio.run(coro)``, also from code already inside an event loop (a notebook): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def probe(url: str, layer: str = "ls-dr10", timeout_s: float = 10.0, attempts: int = 3) -> int:
    """HTTP status of one tiny cutout request; FetchError when the server cannot be reached or
    answers that the endpoint or layer does not exist (4xx other than 429)."""
    last = ""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    for _ in range(attempts):
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(cutout_url(url, 180.0, 30.0, 8, 1.0, layer), timeout=timeout) as response,
            ):
                if 400 <= response.status < 500 and response.status != 429:
                    text = (await response.text(errors="replace"))[:200].strip()
                    raise FetchError(
                        f"the cutout service at {url} answered HTTP {response.status} ({text}) to a test request; "
                        "check the endpoint path (…/viewer/cutout.jpg) and --layer"
                    )
                return response.status
        except TimeoutError:
            last = f"no answer within {timeout_s:g} s"
        except aiohttp.ClientError as exc:
            last = _network_failure(exc)
    raise FetchError(
        f"cannot reach the cutout service at {url} ({last}); check the URL and the network, or start the offline "
        "sky with `agnsurvey sky serve --catalog CATALOG`"
    )
