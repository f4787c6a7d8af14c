"""agnsurvey's science stages and its command line: *what* to compute (``cluster`` says where it
runs, ``storage`` where data lives).

One subpackage per phase, in the order data flows through them; a later phase imports earlier
ones, never the reverse, and nothing imports :mod:`pipeline.cli`:

- :mod:`pipeline.catalog`: catalog files → ``WS/catalog/`` → ``WS/labels/`` (``ingest``, ``label``)
- :mod:`pipeline.images`: catalog rows → ``WS/cube.zarr`` (``fetch``)
- :mod:`pipeline.learn`: cube + labels → ``WS/models/NAME/`` → ``WS/reports/`` (``train``, ``evaluate``)
- :mod:`pipeline.score`: a model + any catalog → ``WS/scores/`` (``score``)
- :mod:`pipeline.synthetic`: the offline sky (``sky make``, ``sky serve``)
- :mod:`pipeline.run`: all of them from one config (``run``, ``demo``); :mod:`pipeline.cli`: ``agnsurvey``

Shared by the phases: :mod:`~pipeline.config` (TOML loading; each phase's ``args`` module holds its
stages' argument classes), :mod:`~pipeline.stage` (locks, Ctrl-C, how ``run`` asks a stage whether
its output is current), :mod:`~pipeline.errors`, :mod:`~pipeline.validate`, :mod:`~pipeline.figures`.
"""
