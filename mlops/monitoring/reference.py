"""The drift reference: the rows a model version was trained against.

Each version's training holdout is saved with it (``holdout/holdout.parquet`` in its
training run): the newest labelled rows before it was registered, in the features the
version scores. Capped at ``max_rows`` by a seeded sample, so the same version always
gets the same reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from mlops.errors import SchemaError

SEED = 0


def reference_frame(
    holdout: pd.DataFrame, feature_names: Sequence[str], max_rows: int, *, seed: int = SEED
) -> pd.DataFrame:
    """The ``feature_names`` columns of ``holdout`` as float64, at most ``max_rows`` rows
    (a deterministic sample in the holdout's order) with an index 0..n-1.

    Raises :class:`~mlops.errors.SchemaError` naming the features the holdout lacks.
    """
    names = list(feature_names)
    missing = [name for name in names if name not in holdout.columns]
    if missing:
        raise SchemaError(
            f"the reference holdout lacks feature(s) {', '.join(missing)} "
            f"(it has: {', '.join(map(str, holdout.columns))})"
        )
    frame = holdout[names]
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).sort_index()
    return frame.astype("float64").reset_index(drop=True)
