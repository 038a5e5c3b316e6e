"""Serving: load the champion ONNX model from the registry, check it, and predict.

The FastAPI app (``app/``) holds one :class:`LoadedModel` at a time and builds feature
matrices with :func:`rows_to_matrix` (inline rows), :func:`table_to_matrix` (inline
array rows under ``columns``) or :func:`features_for_entities`
(the online store).
"""

from mlops.serving.runtime import (
    FeatureColumnError,
    FeatureRowError,
    IncompleteFeaturesError,
    LoadedModel,
    ViewRef,
    features_for_entities,
    load_model,
    rows_to_matrix,
    table_to_matrix,
)

__all__ = [
    "FeatureColumnError",
    "FeatureRowError",
    "IncompleteFeaturesError",
    "LoadedModel",
    "ViewRef",
    "features_for_entities",
    "load_model",
    "rows_to_matrix",
    "table_to_matrix",
]
