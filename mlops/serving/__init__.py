"""Serving: load the champion ONNX model from the registry, check it, and predict.

The FastAPI app (``app/``) holds one :class:`LoadedModel` at a time and builds feature
matrices with :func:`rows_to_matrix` (inline rows) or :func:`features_for_entities`
(the online store).
"""

from mlops.serving.runtime import (
    FeatureRowError,
    IncompleteFeaturesError,
    LoadedModel,
    ViewRef,
    features_for_entities,
    load_model,
    rows_to_matrix,
)

__all__ = [
    "FeatureRowError",
    "IncompleteFeaturesError",
    "LoadedModel",
    "ViewRef",
    "features_for_entities",
    "load_model",
    "rows_to_matrix",
]
