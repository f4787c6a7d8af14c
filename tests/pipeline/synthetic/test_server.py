"""The offline cutout server: a real aiohttp server and client on 127.0.0.1, in-process.

Expected images come from the renderer called directly with galaxies read from the catalog here
(pandas / astropy), and expected neighbours and distances from brute force (astropy SkyCoord).
"""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_FITS, SKY_PARQUET, make_sky
from pipeline.synthetic.footprint import in_footprint
from pipeline.synthetic.render import Galaxy, agn_weight_from_fluxes, encode_jpeg, render_field
from pipeline.synthetic.server import CutoutServer
from pipeline.synthetic.server_config import Faults, ServerConfig, build_server_config
from pipeline.synthetic.skyindex import SkyIndex
from pipeline.synthetic.viewer_api import MAX_SIZE

REPO = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sky")
    make_sky(SkyArgs(out=out, n=2000, seed=1))
    return out


@pytest.fixture(scope="module")
def truth(sky: Path) -> pd.DataFrame:
    """The catalog read independently of the server (astropy), with the renderer's weights."""
    t = Table.read(sky / SKY_FITS, hdu="NSA")
    df = t[["NSAID", "RA", "DEC", "Z", "PETROTH90", "HAFLUX", "N2FLUX", "HBFLUX", "O3FLUX", "SIM_CLASS"]].to_pandas()
    df["W"] = agn_weight_from_fluxes(df.HAFLUX, df.N2FLUX, df.HBFLUX, df.O3FLUX, sim_class=df.SIM_CLASS)
    return df


@pytest.fixture(scope="module")
def index(sky: Path) -> SkyIndex:
    return SkyIndex.from_catalog(sky / SKY_PARQUET)


def galaxy_of(row: pd.Series) -> Galaxy:
    return Galaxy(int(row.NSAID), float(row.RA), float(row.DEC), float(row.PETROTH90), float(row.Z), float(row.W))


def isolated_row(truth: pd.DataFrame, min_sep_deg: float = 0.2) -> pd.Series:
    coords = SkyCoord(truth.RA.to_numpy() * u.deg, truth.DEC.to_numpy() * u.deg)
    _, sep, _ = coords.match_to_catalog_sky(coords, nthneighbor=2)
    return truth.iloc[int(np.flatnonzero(sep.deg > min_sep_deg)[0])]


def empty_position(truth: pd.DataFrame) -> tuple[float, float]:
    """A footprint position with no catalog galaxy within 0.5 degree."""
    coords = SkyCoord(truth.RA.to_numpy() * u.deg, truth.DEC.to_numpy() * u.deg)
    for ra in np.arange(120.0, 260.0, 0.7):
        for dec in np.arange(0.0, 60.0, 0.7):
            if SkyCoord(ra * u.deg, dec * u.deg).separation(coords).deg.min() > 0.5:
                assert in_footprint(ra, dec)
                return float(ra), float(dec)
    raise AssertionError("no empty position found")


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


async def fetch(session: aiohttp.ClientSession, url: str, **params) -> tuple[int, dict, bytes]:
    async with session.get(url, params={k: str(v) for k, v in params.items()}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def run(server: CutoutServer, *requests: dict) -> list[tuple[int, dict, bytes]]:
    """Start ``server``, make ``requests`` one after the other, stop it; the answers."""

    async def main():
        async with server, aiohttp.ClientSession() as session:
            return [await fetch(session, server.url, **q) for q in requests]

    return asyncio.run(main())


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def assert_is_rendering(body: bytes, target: Galaxy | None, neighbours: list[Galaxy], ra, dec, size, pixscale=0.262):
    """The served JPEG is the renderer's field, JPEG-encoded (q 90): the bytes, and pixels close to it."""
    expected = render_field(target, neighbours, ra, dec, size, pixscale)
    image = decode(body)
    assert image.shape == expected.shape
    # JPEG q90 keeps the picture, not the pixel noise (chroma subsampling): compare 4x4 block means
    h = image.shape[0] // 4 * 4
    blocks = (image[:h, :h].astype(float) - expected[:h, :h]).reshape(h // 4, 4, h // 4, 4, 3).mean(axis=(1, 3))
    assert np.abs(blocks).mean() < 3.0
    assert body == encode_jpeg(expected, quality=90)


# --------------------------------------------------------------------------------------------------
# The index


def test_index_lookups_equal_brute_force():
    rng = np.random.default_rng(7)
    n = 4000
    # crowd the hard places: RA wrap-around, both poles, and a dense clump
    ra = np.concatenate([rng.uniform(359.9, 360.0, 500), rng.uniform(0, 0.1, 500), rng.uniform(0, 360, 3000)])
    dec = np.concatenate([rng.uniform(-0.1, 0.1, 1000), rng.uniform(-90, 90, 3000)])
    dec[-400:-200] = rng.uniform(89.5, 90.0, 200)
    dec[-200:] = rng.uniform(-90.0, -89.5, 200)
    frame = pd.DataFrame({"objid": np.arange(n), "ra": ra, "dec": dec, "radius_arcsec": rng.uniform(1, 20, n)})
    ix = SkyIndex.from_frame(frame)
    coords = SkyCoord(ra * u.deg, dec * u.deg)
    queries = [(0.0, 0.0), (359.99, 0.05), (0.01, -0.05), (123.0, 89.9), (10.0, -89.8), (200.0, 45.0)]
    for q_ra, q_dec in queries:
        sep = SkyCoord(q_ra * u.deg, q_dec * u.deg).separation(coords).deg
        for radius in (0.001, 0.05, 0.3, 2.0, 40.0):
            got, got_sep = ix.within(q_ra, q_dec, radius)
            expected = np.flatnonzero(sep <= radius)
            # astropy (Vincenty) and haversine agree to far below a nanodegree
            borderline = np.abs(sep - radius) < 1e-9
            assert set(got) ^ set(expected) <= set(np.flatnonzero(borderline)), (q_ra, q_dec, radius)
            np.testing.assert_allclose(got_sep, sep[got], atol=1e-9)
            assert np.all(np.diff(got_sep) >= 0)
        nearest = int(np.argmin(sep))
        assert ix.nearest(q_ra, q_dec, sep[nearest] * 3600 + 1e-3) == nearest
        assert ix.nearest(q_ra, q_dec, sep[nearest] * 3600 * 0.999) is None


def test_index_from_fits_parquet_and_csv_agree(sky: Path, truth: pd.DataFrame, index: SkyIndex, tmp_path: Path):
    from_fits = SkyIndex.from_catalog(sky / SKY_FITS)
    for ix in (index, from_fits):
        np.testing.assert_array_equal(ix.objid, truth.NSAID)
        np.testing.assert_array_equal(ix.ra, truth.RA)
        np.testing.assert_array_equal(ix.dec, truth.DEC)
        np.testing.assert_array_equal(ix.radius_arcsec, truth.PETROTH90.astype(np.float32))
        np.testing.assert_array_equal(ix.agn_weight, truth.W.astype(np.float32))
    # SIM_CLASS matters: rows with an unusable flux get their weight from it
    assert set(np.unique(index.agn_weight)) == {0.0, 0.5, 1.0}
    # a CSV without SIM_CLASS, with a row of bad coordinates and a row with no radius
    csv = truth.drop(columns=["SIM_CLASS", "W"]).head(50).copy()
    csv.loc[3, "DEC"] = 95.0
    csv.loc[4, "PETROTH90"] = np.nan
    csv.to_csv(tmp_path / "cat.csv", index=False)
    ix = SkyIndex.from_catalog(tmp_path / "cat.csv")
    assert ix.dropped == {"bad_coordinates": 1, "bad_radius": 1}
    kept = csv.drop(index=[3, 4])
    np.testing.assert_array_equal(ix.objid, kept.NSAID)
    w = agn_weight_from_fluxes(kept.HAFLUX, kept.N2FLUX, kept.HBFLUX, kept.O3FLUX)
    np.testing.assert_array_equal(ix.agn_weight, w.astype(np.float32))


# --------------------------------------------------------------------------------------------------
# The service


def test_galaxy_cutout_is_the_rendered_galaxy(sky: Path, truth: pd.DataFrame):
    row = isolated_row(truth)
    size, pixscale = 200, float(row.PETROTH90) * 3 / 200
    server = CutoutServer(ServerConfig(catalog=sky / SKY_FITS))
    exact = {"ra": repr(float(row.RA)), "dec": repr(float(row.DEC)), "size": size, "pixscale": repr(pixscale)}
    # the fetch client's URL: 6 decimals (0.004") still finds the galaxy
    rounded = {"ra": f"{row.RA:.6f}", "dec": f"{row.DEC:.6f}", "size": size, "pixscale": f"{pixscale:.5f}"}
    (status, headers, body), (status2, _, body2) = run(server, exact, rounded)
    assert status == status2 == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert_is_rendering(body, galaxy_of(row), [], float(row.RA), float(row.DEC), size, pixscale)
    assert decode(body).max() > 60  # a galaxy, not only sky
    records = list(server.requests)
    assert [r.outcome for r in records] == ["galaxy", "galaxy"]
    assert [r.objid for r in records] == [int(row.NSAID)] * 2
    assert records[0].bytes == len(body) and records[0].status == 200 and records[0].fault is None


def test_neighbours_are_drawn(tmp_path: Path):
    # A, B 20" east of A (inside A's 67" field), C a degree away
    cat = pd.DataFrame(
        {
            "NSAID": [10, 11, 12],
            "RA": [180.0, 180.0 + 20 / 3600 / np.cos(np.radians(30.0)), 181.0],
            "DEC": [30.0, 30.0, 30.0],
            "Z": [0.02, 0.03, 0.04],
            "PETROTH90": [8.0, 5.0, 6.0],
            "HAFLUX": [100.0, 100.0, 100.0],
            "N2FLUX": [20.0, 150.0, 60.0],
            "HBFLUX": [30.0, 30.0, 30.0],
            "O3FLUX": [10.0, 90.0, 20.0],
        }
    )
    cat.to_csv(tmp_path / "three.csv", index=False)
    cat["W"] = agn_weight_from_fluxes(cat.HAFLUX, cat.N2FLUX, cat.HBFLUX, cat.O3FLUX)
    assert list(cat.W) == [0.0, 1.0, 0.5]  # hand-checked against the BPT lines
    a, b, c = (galaxy_of(r) for _, r in cat.iterrows())
    server = CutoutServer(index=SkyIndex.from_catalog(tmp_path / "three.csv"))
    answers = run(server, {"ra": a.ra, "dec": a.dec}, {"ra": c.ra, "dec": c.dec}, {"ra": b.ra, "dec": b.dec})
    bodies = [body for _, _, body in answers]
    assert_is_rendering(bodies[0], a, [b], a.ra, a.dec, 256)
    assert_is_rendering(bodies[1], c, [], c.ra, c.dec, 256)
    assert_is_rendering(bodies[2], b, [a], b.ra, b.dec, 256)
    # B shows in A's field: without it the picture differs where B is (20" = 76 px east = left)
    alone = render_field(a, [], a.ra, a.dec, 256, 0.262)
    left = (slice(108, 148), slice(32, 72))
    assert mean_abs_diff(decode(bodies[0])[left], alone[left]) > 10
    assert [r.objid for r in server.requests] == [10, 12, 11]


def test_empty_sky_outside_footprint_and_determinism(sky: Path, truth: pd.DataFrame):
    ra, dec = empty_position(truth)
    assert not in_footprint(300.0, -60.0)
    queries = [{"ra": ra, "dec": dec, "size": 100}, {"ra": 300.0, "dec": -60.0, "size": 100}]
    first = run(CutoutServer(ServerConfig(catalog=sky / SKY_PARQUET)), *queries)
    again = run(CutoutServer(ServerConfig(catalog=sky / SKY_FITS)), *queries)
    assert [a[2] for a in first] == [a[2] for a in again]  # same request, same bytes, any server
    (s_empty, _, empty), (s_out, _, outside) = first
    assert s_empty == s_out == 200
    sky_img, black = decode(empty), decode(outside)
    assert sky_img.shape == black.shape == (100, 100, 3)
    assert_is_rendering(empty, None, [], ra, dec, 100)
    assert sky_img.mean() > 5 and sky_img.std() > 0.5  # sky noise, not black
    assert black.max() == 0


def test_bad_requests_and_size_rules(sky: Path, truth: pd.DataFrame):
    ra, dec = empty_position(truth)
    server = CutoutServer(ServerConfig(catalog=sky / SKY_PARQUET, layers=("ls-dr10", "ls-dr9")))
    answers = run(
        server,
        {"dec": dec},
        {"ra": ra},
        {"ra": "abc", "dec": dec},
        {"ra": ra, "dec": 95},
        {"ra": ra, "dec": "nan"},
        {"ra": ra, "dec": dec, "size": 0},
        {"ra": ra, "dec": dec, "size": "12.5"},
        {"ra": ra, "dec": dec, "pixscale": -1},
        {"ra": ra, "dec": dec, "layer": "sdss-dr99"},
        {"ra": ra, "dec": dec},  # defaults: 256 px
        {"ra": ra, "dec": dec, "size": 3001, "pixscale": 1.0},  # capped at 3000, still rendered
        {"ra": ra - 360.0, "dec": dec, "size": 32, "layer": "ls-dr9"},  # RA modulo 360
    )
    statuses = [a[0] for a in answers]
    assert statuses == [400] * 9 + [200] * 3
    messages = [a[2].decode() for a in answers[:9]]
    words = ["ra", "dec", "ra", "dec", "dec", "size", "size", "pixscale", "layer"]
    for word, message in zip(words, messages, strict=True):
        assert word in message, message
    assert decode(answers[9][2]).shape == (256, 256, 3)
    assert decode(answers[10][2]).shape == (MAX_SIZE, MAX_SIZE, 3)
    assert_is_rendering(answers[11][2], None, [], ra, dec, 32)
    assert server.stats.size_clipped == 1
    assert server.stats.outcomes["bad_request"] == 9 and server.stats.outcomes["empty"] == 3
    # permissive by default: any layer string is served
    ((status, _, _),) = run(CutoutServer(ServerConfig(catalog=sky / SKY_PARQUET)), {"ra": ra, "dec": dec, "layer": "x"})
    assert status == 200


def test_stats_endpoint(sky: Path):
    async def main():
        config = ServerConfig(catalog=sky / SKY_PARQUET, faults=Faults(latency_s=0.01))
        async with CutoutServer(config) as server, aiohttp.ClientSession() as session:
            await fetch(session, server.url, ra=300, dec=-60, size=8)
            await fetch(session, server.base_url + "/viewer/jpeg-cutout", ra=300, dec=-60, size=8)
            async with session.get(server.base_url + "/_offline/stats") as resp:
                return await resp.json()

    stats = asyncio.run(main())
    assert stats["requests"] == 2 and stats["status"] == {"200": 2} and stats["outcomes"] == {"outside": 2}
    assert stats["galaxies"] == 2000 and stats["fault_config"] == {"latency_s": 0.01} and stats["delayed"] == 2


# --------------------------------------------------------------------------------------------------
# Faults, one at a time


def outside(i: int, size: int = 16) -> dict:
    """A cheap distinct request: out of the footprint (a black JPEG), distinct by RA."""
    return {"ra": 300.0 + i * 0.01, "dec": -60.0, "size": size}


def test_latency_and_jitter(index: SkyIndex):
    async def main(faults: Faults, seed: int = 0):
        async with CutoutServer(ServerConfig(faults=faults, seed=seed), index=index) as server:
            async with aiohttp.ClientSession() as session:
                times = []
                for i in range(4):
                    t0 = time.monotonic()
                    status, _, _ = await fetch(session, server.url, **outside(i))
                    times.append(time.monotonic() - t0)
                    assert status == 200
            return times, [r.delay_s for r in server.requests]

    times, delays = asyncio.run(main(Faults(latency_s=0.15)))
    assert min(times) >= 0.15 and delays == [0.15] * 4
    _, jittered = asyncio.run(main(Faults(latency_s=0.02, jitter_s=0.05)))
    _, same = asyncio.run(main(Faults(latency_s=0.02, jitter_s=0.05)))
    _, other = asyncio.run(main(Faults(latency_s=0.02, jitter_s=0.05), seed=1))
    assert all(0.02 <= d <= 0.07 for d in jittered) and len(set(jittered)) == 4
    assert jittered == same and jittered != other


def test_error_rate(index: SkyIndex):
    always = CutoutServer(ServerConfig(faults=Faults(error_rate=1.0)), index=index)
    answers = run(always, *(outside(i) for i in range(24)))
    statuses = [a[0] for a in answers]
    assert set(statuses) == {500, 503}
    assert all(b"injected" in a[2] for a in answers)
    assert always.stats.faults["error_500"] + always.stats.faults["error_503"] == 24
    assert all(r.fault == "error" for r in always.requests)

    # a fraction: reproducible per seed; a repeated request draws afresh (retries can succeed)
    def pattern(seed: int) -> list[int]:
        server = CutoutServer(ServerConfig(faults=Faults(error_rate=0.5), seed=seed), index=index)
        return [a[0] for a in run(server, *(outside(i % 3) for i in range(30)))]

    first = pattern(3)
    assert first == pattern(3) and first != pattern(4)
    assert 5 <= first.count(200) <= 25
    assert len({s for s, i in zip(first, range(30), strict=True) if i % 3 == 0}) > 1


def test_throttle_answers_429_with_retry_after(index: SkyIndex):
    async def main():
        faults = Faults(throttle_rate=2.0, throttle_burst=3, retry_after_s=1)
        async with CutoutServer(ServerConfig(faults=faults), index=index) as server:
            async with aiohttp.ClientSession() as session:
                burst = [await fetch(session, server.url, **outside(i)) for i in range(6)]
                await asyncio.sleep(0.6)  # > 1/2 s: one token back
                later = await fetch(session, server.url, **outside(9))
            return burst, later, list(server.requests), server.stats

    burst, later, log, stats = asyncio.run(main())
    assert [s for s, _, _ in burst] == [200, 200, 200, 429, 429, 429]
    assert all(h["Retry-After"] == "1" for s, h, _ in burst if s == 429)
    assert later[0] == 200
    assert [r.fault for r in log] == [None] * 3 + ["throttle"] * 3 + [None]
    assert [r.retry_after for r in log if r.status == 429] == ["1"] * 3
    assert stats.faults["throttle"] == 3


def test_truncated_bodies(index: SkyIndex):
    full = run(CutoutServer(index=index), outside(0, size=64))[0][2]
    server = CutoutServer(ServerConfig(faults=Faults(truncate_rate=1.0)), index=index)
    status, headers, body = run(server, outside(0, size=64))[0]
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    assert 0.1 * len(full) <= len(body) < len(full) and full.startswith(body)
    assert not body.endswith(b"\xff\xd9")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(body)).load()
    assert server.requests[0].fault == "truncate" and server.requests[0].bytes == len(body)

    async def close_mode():
        faults = Faults(truncate_rate=1.0, truncate_mode="close")
        async with CutoutServer(ServerConfig(faults=faults), index=index) as srv, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientPayloadError):
                await fetch(session, srv.url, **outside(0, size=64))
            return srv

    srv = asyncio.run(close_mode())
    record = srv.requests[0]
    assert record.fault == "truncate" and record.status == 200 and 0 < record.bytes < len(full)


def test_hung_connections_time_out_and_do_not_block_shutdown(index: SkyIndex):
    async def main():
        server = CutoutServer(ServerConfig(faults=Faults(hang_rate=1.0, hang_s=60.0)), index=index)
        await server.start()
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                async with session.get(server.url, params=outside(0), timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass
            waited = time.monotonic() - t0
        # still hanging: counted already, logged once the connection is dropped
        assert server.stats.faults["hang"] == 1 and len(server.requests) == 0
        t0 = time.monotonic()
        await server.close()
        return server, waited, time.monotonic() - t0

    server, waited, closing = asyncio.run(main())
    assert 0.3 <= waited < 2.0 and closing < 2.0
    (record,) = server.requests
    assert record.fault == "hang" and record.status is None and record.bytes == 0
    assert server.stats.faults["hang"] == 1


def test_max_concurrent_rejects_the_excess(index: SkyIndex):
    async def main():
        faults = Faults(max_concurrent=2, latency_s=0.2, retry_after_s=2)
        async with CutoutServer(ServerConfig(faults=faults), index=index) as server:
            async with aiohttp.ClientSession() as session:
                together = await asyncio.gather(*(fetch(session, server.url, **outside(i)) for i in range(5)))
                one_by_one = [await fetch(session, server.url, **outside(i)) for i in range(3)]
            return together, one_by_one, list(server.requests), server.stats

    together, one_by_one, log, stats = asyncio.run(main())
    assert sorted(s for s, _, _ in together) == [200, 200, 503, 503, 503]
    assert all(h["Retry-After"] == "2" for s, h, _ in together if s == 503)
    assert [s for s, _, _ in one_by_one] == [200] * 3
    rejected = [r for r in log if r.fault == "overload"]
    assert len(rejected) == 3 and all(r.t_end - r.t_start < 0.1 for r in rejected)  # at once, not queued
    assert max(r.in_flight for r in log if r.fault is None) == 2
    assert stats.faults["overload"] == 3 and stats.max_in_flight == 2


def test_fault_config_is_validated():
    for bad in (
        {"error_rate": 1.5},
        {"latency_s": -1},
        {"throttle_rate": 0},
        {"throttle_burst": 3},
        {"max_concurrent": 0},
        {"truncate_mode": "half"},
        {"hang_s": 0},
    ):
        with pytest.raises(ConfigError):
            Faults(**bad)
    with pytest.raises(ConfigError, match="unknown key 'latency'"):
        build_server_config({"faults": {"latency": 1}})
    with pytest.raises(ConfigError, match="port"):
        ServerConfig(port=70000)
    with pytest.raises(ConfigError, match="catalog"):
        CutoutServer(ServerConfig())
    config = build_server_config(
        {"port": 8123, "faults": {"error_rate": 0.1, "latency_s": 0.5}}, latency_s=0.2, port=None, seed=4
    )
    assert config.port == 8123 and config.seed == 4
    assert config.faults == Faults(error_rate=0.1, latency_s=0.2)


def test_process_pool_renders_the_same(sky: Path, truth: pd.DataFrame):
    row = isolated_row(truth)
    query = {"ra": repr(float(row.RA)), "dec": repr(float(row.DEC)), "size": 64}
    threads = run(CutoutServer(ServerConfig(catalog=sky / SKY_PARQUET)), query)
    processes = run(CutoutServer(ServerConfig(catalog=sky / SKY_PARQUET, executor="process", workers=1)), query)
    assert threads[0][2] == processes[0][2]


def test_serve_command_prints_url_and_stops_on_sigint(sky: Path, tmp_path: Path):
    url_file = tmp_path / "url.txt"
    code = (
        "from pipeline.synthetic.server import serve; from pipeline.synthetic.server_config import ServerConfig; "
        f"serve(ServerConfig(catalog={str(sky / SKY_PARQUET)!r}), url_file={str(url_file)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        url = url_file.read_text().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/viewer/cutout.jpg")

        async def get():
            async with aiohttp.ClientSession() as session:
                return await fetch(session, url, ra=300, dec=-60, size=8)

        assert asyncio.run(get())[0] == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"cutout URL: {url}" in text and "serving 2,000 galaxies" in text and '"requests": 1' in text


def test_index_builds_fast_and_looks_up_fast():
    rng = np.random.default_rng(0)
    n = 1_000_000
    frame = pd.DataFrame(
        {
            "objid": np.arange(n),
            "ra": rng.uniform(110, 265, n),
            "dec": np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-5)), np.sin(np.radians(70)), n))),
            "radius_arcsec": rng.uniform(2, 30, n),
        }
    )
    t0 = time.perf_counter()
    ix = SkyIndex.from_frame(frame)
    built = time.perf_counter() - t0
    picks = rng.integers(0, n, 500)
    t0 = time.perf_counter()
    for i in picks:
        assert ix.nearest(ix.ra[i] + 1e-5, ix.dec[i], 3.0) == i
    per_lookup = (time.perf_counter() - t0) / len(picks)
    assert built < 5.0 and per_lookup < 1e-3, (built, per_lookup)
