"""The scoring phase. In: a trained model and any catalog with positions and a radius (no spectra
needed), or a column of local image files. Out: ``WS/scores/``, P(AGN) and a label per row (a HATS
table). Command: ``agnsurvey score``.

:mod:`~pipeline.score.model` finds the model and its threshold, :mod:`~pipeline.score.sources`
where the pixels come from, :mod:`~pipeline.score.parts` scores and writes one part, and
:mod:`~pipeline.score.score` runs them all, streaming behind the fetch.
"""
