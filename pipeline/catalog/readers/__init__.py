"""One reader module per input format (as astropy's ``io`` has): FITS, Parquet, CSV, and HATS
catalogs given as input. Each reads a file's schema without its data, plans the chunks one task
reads, and reads one chunk's source columns as stored (:mod:`~pipeline.catalog.readers.base` says
how); :mod:`pipeline.catalog.sources` picks the reader by format and maps the columns."""
