"""Model monitoring: the request log's window against the training reference.

::

    request log ──window──▶ frame: features (+ predicted label, probability, feedback label)
    holdout of the version ──sample──▶ reference: features      │
                          Evidently drift + data summary ◀──────┘ ──▶ DriftFigures + HTML
                          feedback labels ──▶ live accuracy
                          thresholds ──▶ Judgement: the events to emit, and why

- :mod:`~mlops.monitoring.window`: logged predictions as a frame, one row per scored row.
- :mod:`~mlops.monitoring.reference`: the reference rows (a version's training holdout).
- :mod:`~mlops.monitoring.drift`: the Evidently report and its figures (drift share,
  per-feature score, method, threshold, drifted).
- :mod:`~mlops.monitoring.judge`: live accuracy and the threshold decisions.
- :mod:`~mlops.monitoring.history`: the ``monitoring_runs`` table (one row per run).

Pure functions over DataFrames, except :mod:`history` (SQL) and :func:`window.read_window`
(the request log): the monitor flow wires them through tasks.
"""
