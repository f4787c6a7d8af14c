"""The catalog phase. In: catalog files (NSA FITS, Parquet, CSV, HATS). Out: ``WS/catalog/``, the
canonical catalog as a HATS table in sky order, and ``WS/labels/``, its BPT classes, labels and
splits. Commands: ``agnsurvey ingest``, ``agnsurvey label``.

:mod:`~pipeline.catalog.schema` is the data contract; :mod:`~pipeline.catalog.readers` reads one
format each, :mod:`~pipeline.catalog.sources` picks one and :mod:`~pipeline.catalog.canonical` maps
its columns; :mod:`~pipeline.catalog.bpt` and :mod:`~pipeline.catalog.splits` are pure kernels.
"""
