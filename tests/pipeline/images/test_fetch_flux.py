"""Flux pixels from the viewer's FITS cutouts: the cube says what a pixel is, holds nanomaggies
north up with flux conserved, refuses to mix pixel kinds, and a bad FITS body is a failed row."""

import io

import dask
import numpy as np
import pandas as pd
import pytest
from aiohttp import web
from astropy.io import fits
from conftest import serve_in_thread, write_table

from pipeline.catalog.args import IngestArgs
from pipeline.catalog.ingest import ingest
from pipeline.cli import main
from pipeline.errors import ConfigError, FetchError
from pipeline.images.args import FetchArgs
from pipeline.images.fetch import fetch
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_FITS, make_sky
from pipeline.synthetic.render import render_flux
from pipeline.synthetic.server import serve_in_background
from pipeline.synthetic.server_config import ServerConfig
from pipeline.synthetic.skyindex import SkyIndex
from storage.cube import open_cube
from storage.tables import read_cube_status

SIZE, IMAGE = 64, 32  # every output pixel is a 2x2 block of the requested field


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    base = tmp_path_factory.mktemp("flux")
    with dask.config.set(scheduler="synchronous"):
        make_sky(SkyArgs(out=base / "sky", n=120, seed=5))
        ingest(IngestArgs(workspace=base / "ws", inputs=[str(base / "sky" / SKY_FITS)]))
    return base


def args_for(ws, url, **kw) -> FetchArgs:
    base = dict(size=SIZE, image_size=IMAGE, shard_images=32, inner_images=8, rate=400.0, concurrency=8)
    return FetchArgs(workspace=ws, cutout_url=url, **{**base, **kw})


def test_flux_cube_holds_the_rendered_nanomaggies_north_up_with_flux_conserved(sky):
    ws = sky / "ws"
    index = SkyIndex.from_catalog(sky / "sky" / SKY_FITS)
    with serve_in_background(ServerConfig(catalog=(str(sky / "sky" / SKY_FITS),)), index=index) as server:
        manifest = fetch(args_for(ws, server.url, pixels="flux", bands="gz"))
    assert not manifest.unfinished
    cube = open_cube(ws / "cube.zarr", mode="r")
    assert (cube.pixels, cube.bands, cube.attrs["units"]) == ("flux", "gz", "nanomaggies per output pixel")
    assert cube.attrs["orientation"] == "row 0 north, column 0 east" and cube.attrs["source"] == "viewer-fits"
    images = cube.read_block(0, cube.layout.n)
    assert images.dtype == np.float32 and images.shape == (cube.layout.n, IMAGE, IMAGE, 2)
    catalog = pd.read_parquet(ws / "catalog" / "dataset").sort_values("cube_row")
    pixscale = cube.pixscales()
    ok = np.flatnonzero(cube.status_codes() == 1)
    assert len(ok) > 50
    for row in ok[:5]:
        ra, dec, p = (float(f"{v:.{d}f}") for v, d in ((catalog["ra"].iloc[row], 6), (catalog["dec"].iloc[row], 6),
                                                       (pixscale[row], 5)))  # as the URL carries them
        target = index.galaxy(index.nearest(ra, dec, 3.0))
        neighbours = [index.galaxy(j) for j in index.in_field(ra, dec, SIZE * p / 2 / 3600)]
        truth = render_flux(target, neighbours, ra, dec, SIZE, p, "gz")
        blocks = truth.reshape(IMAGE, 2, IMAGE, 2, 2).sum(axis=(1, 3))  # 2x2 sums: flux per output pixel
        np.testing.assert_allclose(images[row], blocks, rtol=1e-4, atol=1e-5)  # north up: no flip left over


def test_a_cube_of_one_pixel_kind_is_never_filled_with_another(sky, tmp_path):
    ws = tmp_path / "ws"
    import shutil

    shutil.copytree(sky / "ws" / "catalog", ws / "catalog")
    with serve_in_background(ServerConfig(catalog=(str(sky / "sky" / SKY_FITS),))) as server:
        fetch(args_for(ws, server.url))
        before = open_cube(ws / "cube.zarr", mode="r").read_block(0, 10)
        with pytest.raises(FetchError, match=r"other cutout settings \(pixels 'rgb' != 'flux'\); pass --restart"):
            fetch(args_for(ws, server.url, pixels="flux"))
    cube = open_cube(ws / "cube.zarr", mode="r")
    assert cube.pixels == "rgb" and np.array_equal(cube.read_block(0, 10), before)


def fits_body(shape, value=1.0) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(np.full(shape, value, np.float32)).writeto(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (fits_body((2, 64, 64)), "FITS shape 2x64x64, asked for 3x64x64"),
        (fits_body((3, 64, 64), np.nan), "non-finite pixels"),
        (b"<html>oops</html>", "not a FITS file"),
        (fits_body((3, 64, 64))[:5000], "truncated FITS body"),
    ],
)
def test_a_fits_body_that_is_not_the_asked_image_is_a_failed_row(tmp_path, body, reason):
    write_table(pd.DataFrame({"objid": [1, 2], "cube_row": [0, 1], "radius_arcsec": [10.0, 10.0]}),
                tmp_path / "catalog")  # fmt: skip

    async def answer(request):
        return web.Response(body=body, content_type="application/fits")

    with serve_in_thread(answer, "/viewer/cutout.fits") as (url, log):
        manifest = fetch(args_for(tmp_path, url.replace(".fits", ".jpg"), pixels="flux", retries=1))
    assert list(read_cube_status(tmp_path)) == ["failed", "failed"]
    failures = pd.read_parquet(tmp_path / "cube_failures.parquet")
    assert failures["reason"].str.contains(reason, regex=False).all(), failures["reason"].tolist()
    assert all(q.get("bands") == "grz" for _, q in log[1:])  # the probe aside, every request asked for the bands
    assert manifest.unfinished


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--with-invvar", "--pixels", "flux"], "--with-invvar needs --bricks ROOT"),
        (["--with-invvar"], "add --pixels flux"),
        (["--bands", "gr"], "--pixels rgb is the survey's g,r,z colour mapping and needs --bands grz"),
        (["--pixels", "flux", "--bands", "gx"], "fetch.bands must be distinct letters of 'grz'"),
        (["--pixels", "flux", "--cutout-url", "http://127.0.0.1:9/other/endpoint"], "does not end in /cutout.jpg"),
        (["--cutout-url", "http://127.0.0.1:9/viewer/cutout.fits"], "is the viewer's FITS endpoint: for rgb pixels"),
    ],
)
def test_pixel_options_that_cannot_work_are_one_line_errors(tmp_path, capsys, flags, message):
    write_table(pd.DataFrame({"objid": [1], "cube_row": [0], "radius_arcsec": [10.0]}), tmp_path / "catalog")
    if "--cutout-url" not in flags:
        flags = [*flags, "--cutout-url", "http://127.0.0.1:9/viewer/cutout.jpg"]
    assert main(["--quiet", "--workers", "1", "fetch", "--workspace", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "cube.zarr").exists()


def test_fetch_args_refuse_bad_pixel_kinds():
    with pytest.raises(ConfigError, match="fetch.pixels must be one of"):
        FetchArgs(workspace="/tmp/x", cutout_url="http://a/viewer/cutout.jpg", pixels="jpeg")


def test_the_fits_endpoint_may_be_given_itself(sky, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(sky / "ws" / "catalog", ws / "catalog")
    with serve_in_background(ServerConfig(catalog=(str(sky / "sky" / SKY_FITS),))) as server:
        manifest = fetch(args_for(ws, server.url.replace("/cutout.jpg", "/cutout.fits"), pixels="flux"))
        assert all(r.path.endswith("/cutout.fits") for r in server.requests)
    assert manifest.rows_out == manifest.rows_in > 0 and open_cube(ws / "cube.zarr", mode="r").pixels == "flux"
