"""Cutout requests, validation and decode/resize; the client against a tiny server of the test's own."""

import asyncio
import io
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from aiohttp import web
from conftest import serve_in_thread
from PIL import Image

from pipeline.errors import FetchError
from pipeline.images.client import ClientSettings, fetch_many, retry_after_seconds
from pipeline.images.decode import decode_jpeg, is_constant, resize
from pipeline.images.requests import check_cutout_url, cutout_url, pixscale_for


def jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_pixscale_from_radius():
    pixscale, usable = pixscale_for(np.array([10.0, 25.0, np.nan, 0.0, -3.0, 1e6]), 250)
    assert pixscale[0] == pytest.approx(10 * 1.5 * 2 / 250)  # 0.12 arcsec/pixel
    assert pixscale[1] == pytest.approx(0.3)
    assert list(usable) == [True, True, False, False, False, True]
    assert pixscale[5] == 20.0  # clipped to the upper bound
    assert np.isnan(pixscale[2:5]).all()


def test_url_carries_size_pixscale_layer():
    url = cutout_url("http://h/viewer/cutout.jpg", 150.1234567, -2.5, 250, 0.1234567, "ls-dr10")
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert q == {"ra": "150.123457", "dec": "-2.500000", "size": "250", "pixscale": "0.12346", "layer": "ls-dr10"}
    assert url.startswith("http://h/viewer/cutout.jpg?")


@pytest.mark.parametrize(
    "bad", ["legacysurvey.org/viewer/cutout.jpg", "ftp://h/x", "http:///cutout.jpg", "http://h/c.jpg?ra=1"]
)
def test_malformed_url(bad):
    with pytest.raises(FetchError, match="cutout URL"):
        check_cutout_url(bad)


def test_decode_validates_shape_and_corruption():
    image = np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8)
    body = jpeg(image)
    assert decode_jpeg(body, 50).shape == (50, 50, 3)
    with pytest.raises(ValueError, match="shape 50x50, asked for 60x60"):
        decode_jpeg(body, 60)
    with pytest.raises(ValueError, match="^corrupt or truncated JPEG$"):
        decode_jpeg(body[: len(body) // 2], 50)
    with pytest.raises(ValueError, match="^not an image$"):
        decode_jpeg(b"<html>503 Service Unavailable</html>", 50)
    png = io.BytesIO()
    Image.fromarray(image).save(png, "PNG")
    with pytest.raises(ValueError, match="^a PNG image, not a JPEG$"):
        decode_jpeg(png.getvalue(), 50)


def test_resize_is_antialiased_lanczos():
    image = np.random.default_rng(1).integers(0, 255, (250, 250, 3), dtype=np.uint8)
    out = resize(image, 128)
    want = np.asarray(Image.fromarray(image).resize((128, 128), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out, want)
    assert abs(float(out.mean()) - float(image.mean())) < 2  # a smooth filter keeps the mean
    assert out.std() < image.std()  # noise is averaged, not aliased


def test_constant_image_is_no_coverage():
    assert is_constant(np.zeros((5, 5, 3), np.uint8)) and not is_constant(np.eye(5, dtype=np.uint8))


def test_retry_after_parsing():
    assert retry_after_seconds("3", 1.0) == 3.0
    assert retry_after_seconds(None, 1.5) == 1.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 2.0) == 0.0  # in the past
    assert retry_after_seconds("soon", 2.0) == 2.0


def test_client_retries_then_gives_up_with_the_reason():
    calls: dict[str, int] = {}
    image = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    async def handler(request):
        ra = request.query["ra"]
        calls[ra] = calls.get(ra, 0) + 1
        if ra.startswith("1.") and calls[ra] < 3:
            return web.Response(status=503)  # two failures, then success
        if ra.startswith("2."):
            return web.Response(status=500)  # never succeeds
        if ra.startswith("3."):
            return web.Response(status=404, text="no such layer")  # not retried
        return web.Response(body=jpeg(image), content_type="image/jpeg")

    with serve_in_thread(handler) as (url, _):
        urls = [cutout_url(url, ra, 0.0, 32, 0.2, "ls-dr10") for ra in (1.0, 2.0, 3.0, 4.0)]
        settings = ClientSettings(url, size=32, image_size=16, retries=3, backoff_s=0.01, rate=1000)
        outcomes, stats = asyncio.run(fetch_many(urls, settings))
    assert [o.status for o in outcomes] == ["ok", "failed", "failed", "ok"]
    assert outcomes[0].attempts == 3 and outcomes[0].image.shape == (16, 16, 3)
    assert outcomes[1].attempts == 4 and "gave up after 4 attempts; last: HTTP 500" in outcomes[1].reason
    assert outcomes[2].attempts == 1 and outcomes[2].reason == "HTTP 404 text/plain, 13 bytes: no such layer"
    assert calls == {"1.000000": 3, "2.000000": 4, "3.000000": 1, "4.000000": 1}
    assert stats.retries == 2 + 3 and stats.requests == 9


def test_client_honours_retry_after_and_pauses_everyone():
    seen = []
    image = np.full((16, 16, 3), 90, np.uint8)
    image[0, 0] = 0

    async def handler(request):
        seen.append(request.query["ra"])
        if len(seen) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(body=jpeg(image), content_type="image/jpeg")

    with serve_in_thread(handler) as (url, log):
        urls = [cutout_url(url, ra, 0.0, 16, 0.2, "x") for ra in (1.0, 2.0, 3.0)]
        outcomes, stats = asyncio.run(
            fetch_many(urls, ClientSettings(url, size=16, image_size=16, concurrency=1, rate=1000))
        )
    assert [o.status for o in outcomes] == ["ok", "ok", "ok"] and stats.throttled == 1
    times = [t for t, _ in log]
    assert times[1] - times[0] >= 0.95  # nothing was sent during the Retry-After second


def test_client_rate_limit_spaces_requests():
    image = np.random.default_rng(3).integers(0, 255, (16, 16, 3), dtype=np.uint8)

    async def handler(request):
        return web.Response(body=jpeg(image), content_type="image/jpeg")

    with serve_in_thread(handler) as (url, log):
        urls = [cutout_url(url, 1.0 + i, 0.0, 16, 0.2, "x") for i in range(11)]
        asyncio.run(fetch_many(urls, ClientSettings(url, size=16, image_size=16, concurrency=8, rate=20.0)))
    times = sorted(t for t, _ in log)
    assert times[-1] - times[0] >= 10 / 20.0 * 0.95  # 11 starts at 20/s need >= 0.5 s


def test_deadline_does_not_count_time_queued_behind_the_rate_limit():
    image = np.random.default_rng(4).integers(0, 255, (16, 16, 3), dtype=np.uint8)

    async def handler(request):
        return web.Response(body=jpeg(image), content_type="image/jpeg")

    with serve_in_thread(handler) as (url, _):
        urls = [cutout_url(url, 1.0 + i, 0.0, 16, 0.2, "x") for i in range(30)]
        settings = ClientSettings(url, size=16, image_size=16, concurrency=4, rate=20.0, deadline_s=0.5)
        outcomes, _ = asyncio.run(fetch_many(urls, settings))  # the last starts ~1.5 s in: past 0.5 s, yet ok
    assert [o.status for o in outcomes] == ["ok"] * 30


def test_probe_refuses_a_wrong_endpoint():
    async def handler(request):
        return web.Response(status=404, text="Not Found")

    from pipeline.images.client import probe

    with serve_in_thread(handler) as (url, _), pytest.raises(FetchError, match=r"answered HTTP 404 .*endpoint path"):
        asyncio.run(probe(url))


def test_a_decompression_bomb_jpeg_is_refused_with_its_reason():
    body = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(body, "JPEG")  # 144M pixels in a few hundred kB
    with pytest.raises(ValueError, match="^too many pixels to decode safely"):
        decode_jpeg(body.getvalue(), 250)
