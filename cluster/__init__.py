"""*Where* graphs run: cluster kinds (local, local-cuda, a scheduler, SLURM) as small classes, the
devices of one training process, and one training process per Dask worker. Never imports ``pipeline``.
"""
