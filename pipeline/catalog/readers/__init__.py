"""One reader module per input format (as astropy's ``io`` has): FITS, Parquet and CSV each read a
file's schema without its data, plan the chunks one task reads, and read one chunk's source columns
as stored (:mod:`~pipeline.catalog.readers.base` says how); ``hats`` finds the data files of a HATS
catalog given as input (then read as Parquet). :mod:`pipeline.catalog.sources` picks the reader by
format and maps the columns."""
