"""The offline sky, for the demo, the tests and the benchmarks. In: a size and a seed. Out: an
NSA-like catalog (``sky make``: FITS and Parquet) and a server on 127.0.0.1 that speaks the Legacy
Surveys viewer's cutout API with renderings of it (``sky serve``). Commands: ``agnsurvey sky make``,
``agnsurvey sky serve``.
"""
