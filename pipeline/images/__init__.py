"""The images phase. In: the catalog's positions and radii (``WS/catalog/``, the labelled rows
first). Out: ``WS/cube.zarr``, one validated, resized cutout per catalog row, and
``WS/cube_failures.parquet``. Command: ``agnsurvey fetch``.

:mod:`~pipeline.images.requests` says what to ask the viewer for, :mod:`~pipeline.images.client`
asks it (asyncio, politely), :mod:`~pipeline.images.decode` checks and resizes what comes back, and
:mod:`~pipeline.images.fetch` fills the cube shard by shard on the cluster.
"""
