"""The images phase. In: the catalog's positions and radii (``WS/catalog/``, the labelled rows
first). Out: ``WS/cube.zarr``, one validated cutout per catalog row (rgb bytes or flux in
nanomaggies), and ``WS/cube_failures.parquet``. Command: ``agnsurvey fetch``.

:mod:`~pipeline.images.requests` says what to ask the viewer for, :mod:`~pipeline.images.sources`
puts the three pixel sources behind one interface: the viewer's JPEG and FITS, asked by
:mod:`~pipeline.images.client` (asyncio, politely) and checked by :mod:`~pipeline.images.decode`,
and the survey's coadd bricks (:mod:`~pipeline.images.bricks`, resampled by
:mod:`~pipeline.images.resample`, coloured by :mod:`~pipeline.images.survey_rgb`).
:mod:`~pipeline.images.fetch` fills the cube shard by shard on the cluster.
"""
