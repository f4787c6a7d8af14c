"""The learning phase. In: the cube and the labels. Out: ``WS/models/NAME/`` (checkpoints, the final
model, its history) and ``WS/reports/`` (metrics, threshold, plots). Commands: ``agnsurvey train``,
``agnsurvey evaluate``.

:mod:`~pipeline.learn.rows` picks the galaxies, :mod:`~pipeline.learn.batches` reads them from the
cube, :mod:`~pipeline.learn.model` builds the networks, :mod:`~pipeline.learn.modeldir` knows a
model directory; only :mod:`~pipeline.learn.batches`, ``model`` and ``callbacks`` import Keras when
they load (the rest load it only when a model is built or read).
"""
