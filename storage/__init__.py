"""*Where* data lives: the workspace and its locks, manifests, HATS tables (and their HEALPix
layout), the Zarr image cube, and the readers of every workspace table. Never imports ``pipeline``.
"""
