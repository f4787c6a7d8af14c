"""The cutout service of ``bench_fetch.py``: what every method requests (:data:`SIZE`, :data:`LAYER`,
:class:`Galaxy`), the offline server answering it in its own process, and the meters around each method.

The server (``agnsurvey sky serve``) runs as a child process so that its CPU is measured apart from
the client's; :class:`Meter` takes wall time, client and server CPU, the whole machine's busy time
and the server's counters before and after a method.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

SIZE = 250  # pixels requested (the paper's)
IMAGE_SIZE = 128  # pixels stored
LAYER = "ls-dr10"
CACHE_MB = 1024  # server JPEG cache: every URL of the run fits (~10 kB each)

now = time.perf_counter


@dataclass(frozen=True)
class Galaxy:
    """One galaxy as every method asks for it (the server's cache hits only on the same request)."""

    ra: float
    dec: float
    pixscale: float  # arcsec/pixel, as the fetch stage requests it (float32 in the cube)


# --------------------------------------------------------------------------------------------------
# The server, in its own process; CPU meters


@dataclass
class Server:
    url: str  # the cutout endpoint, http://127.0.0.1:PORT/viewer/cutout.jpg
    proc: subprocess.Popen

    @property
    def base(self) -> str:
        return self.url.rsplit("/viewer/", 1)[0]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_offline/stats", timeout=10) as r:
            return json.loads(r.read())

    def cpu_seconds(self) -> float:
        """CPU (user + system) of the server process and its render pool so far."""
        return process_cpu([self.proc.pid], children=True)


@contextlib.contextmanager
def cutout_server(fits_path: Path, latency_s: float, data: Path) -> Iterator[Server]:
    """``agnsurvey --config serve.toml sky serve ...`` as a child process; yields once it listens.

    The CLI has no flag for the JPEG cache size, so a ``[serve]`` table sets ``cache_mb`` (and turns
    the request log off: it is not needed here). Render workers are processes, for the warm-up.
    """
    config = data / "serve.toml"
    config.write_text(f"[serve]\ncache_mb = {CACHE_MB}\nlog_limit = 0\n")
    url_file = data / "server-url.txt"
    url_file.unlink(missing_ok=True)
    exe = Path(sys.executable).with_name("agnsurvey")
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())"]
    )
    cmd += ["--config", str(config), "sky", "serve", "--catalog", str(fits_path), "--latency", str(latency_s)]
    cmd += ["--url-file", str(url_file), "--processes", "--host", "127.0.0.1", "--port", "0"]
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not url_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cutout server did not start; see {data / 'server.log'}")
            time.sleep(0.1)
        yield Server(url_file.read_text().strip(), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def process_cpu(pids: Sequence[int], children: bool = False) -> float:
    """Summed user + system CPU seconds of ``pids`` (and their live children)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *(proc.children(recursive=True) if children else [])]
            for p in procs:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (all cores, all processes)."""
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


@dataclass
class Snapshot:
    wall: float
    client_cpu: float
    server_cpu: float
    busy: float
    total: float
    renders: int
    requests: int


class Meter:
    """Wall time, client and server CPU, machine busy time and server counters around one method."""

    def __init__(self, server: Server, client_pids: Callable[[], Sequence[int]] = lambda: [os.getpid()]):
        self.server, self.client_pids = server, client_pids

    def snap(self) -> Snapshot:
        stats = self.server.stats()
        busy, total = machine_busy()
        return Snapshot(now(), process_cpu(self.client_pids()), self.server.cpu_seconds(), busy, total,
                        stats["renders"], stats["requests"])  # fmt: skip

    @contextlib.contextmanager
    def measure(self, images: int, out: dict[str, Any]) -> Iterator[None]:
        a = self.snap()
        yield
        b = self.snap()
        seconds = b.wall - a.wall
        out.update(
            {
                "images": images,
                "seconds": seconds,
                "images_per_s": images / seconds,
                "client_cpu_ms_per_image": 1e3 * (b.client_cpu - a.client_cpu) / images,
                "server_cpu_ms_per_image": 1e3 * (b.server_cpu - a.server_cpu) / images,
                "machine_busy_fraction": (b.busy - a.busy) / max(b.total - a.total, 1e-9),
                # CPU of every other process (other work on a shared machine) as a share of all cores
                "others_busy_fraction": max(
                    0.0,
                    ((b.busy - a.busy) - (b.client_cpu - a.client_cpu) - (b.server_cpu - a.server_cpu))
                    / max(b.total - a.total, 1e-9),
                ),
                "server_requests": b.requests - a.requests,
                "server_renders": b.renders - a.renders,
                "loadavg_1m_after": os.getloadavg()[0],
            }
        )


def fmt_rate(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
