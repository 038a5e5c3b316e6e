"""Request and response bodies of the serving API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    StringConstraints,
    Tag,
    model_validator,
)

EntityKey = Annotated[str, StringConstraints(min_length=1, max_length=256)]
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ROWS_FORMS = ("objects", "arrays")
"""The tags of the two forms of inline rows; :func:`plain_loc` drops them from error locations."""


def _rows_form(value: Any) -> str:
    """Which form ``rows`` takes: arrays when its first row is an array, else objects."""
    first = value[0] if isinstance(value, list) and value else None
    return "arrays" if isinstance(first, list) else "objects"


InlineRows = Annotated[
    Annotated[list[dict[str, FiniteFloat]], Tag("objects")]
    | Annotated[list[list[FiniteFloat]], Tag("arrays")],
    Discriminator(_rows_form),
]


def plain_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """An error location of :class:`PredictRequest` without the form tag of 'rows'
    (``("rows", "objects", 0, "amount")`` → ``("rows", 0, "amount")``)."""
    if len(loc) >= 2 and loc[0] == "rows" and loc[1] in ROWS_FORMS:
        return (loc[0], *loc[2:])
    return loc


class PredictRequest(BaseModel):
    """Score entities by key (features from the online store), inline rows, or both.

    Inline rows are objects keyed by feature name, or, with ``columns``, arrays of values
    in that column order (the compact form for large batches).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"entities": ["card_00001", "card_00042"]},
                {"rows": [{"amount": 12.5, "amount_mean_24h": 30.1, "events_count_1h": 2}]},
                {
                    "columns": ["amount", "amount_mean_24h", "events_count_1h"],
                    "rows": [[12.5, 30.1, 2], [80.0, 41.7, 5]],
                },
            ]
        },
    )

    entities: list[EntityKey] | None = Field(
        default=None,
        description="Entity keys (values of the model's entity_key) whose features are read "
        "from the online store.",
        examples=[["card_00001", "card_00042"]],
    )
    rows: InlineRows | None = Field(
        default=None,
        description="Raw feature rows: objects holding exactly the model's feature_names "
        "(see GET /model), or, with 'columns', arrays of values in that order. Scaling "
        "happens inside the model.",
        examples=[[{"amount": 12.5, "amount_mean_24h": 30.1, "events_count_1h": 2}]],
    )
    columns: list[FeatureName] | None = Field(
        default=None,
        min_length=1,
        description="With array rows: the feature each position holds; every one of the "
        "model's feature_names once, in any order.",
        examples=[["amount", "amount_mean_24h", "events_count_1h"]],
    )

    @model_validator(mode="after")
    def _consistent(self) -> PredictRequest:
        if not self.entities and not self.rows:
            raise ValueError("give at least one of 'entities' or 'rows', non-empty")
        arrays = bool(self.rows) and isinstance(self.rows[0], list)  # type: ignore[index]
        if arrays and self.columns is None:
            raise ValueError("array 'rows' need 'columns' naming the feature of each position")
        if self.columns is not None and not arrays:
            raise ValueError("'columns' go with array 'rows' (one value per column)")
        return self

    @property
    def size(self) -> int:
        return len(self.entities or ()) + len(self.rows or ())


class ModelRef(BaseModel):
    name: str = Field(description="Registered model name.", examples=["fraud_detector"])
    version: str = Field(description="Registered model version.", examples=["3"])


class Prediction(BaseModel):
    entity: str | None = Field(
        description="The entity key, or null for an inline row.", examples=["card_00001"]
    )
    index: int = Field(
        description="Position in the request's 'entities' (entity set) or 'rows' (entity null).",
        examples=[0],
    )
    label: Literal[0, 1] = Field(description="1 when P(positive) >= 0.5.", examples=[0])
    probability: float = Field(description="P(positive) = probabilities[1].", examples=[0.031])
    probabilities: list[float] = Field(
        description="[P(negative), P(positive)].", examples=[[0.969, 0.031]]
    )


class PredictResponse(BaseModel):
    request_id: str = Field(
        description="Identifies this prediction in the request log; send it back with "
        "POST /feedback once the true label is known.",
        examples=["3f1c0e2a9b7d4c55a1e0f6b2c9d8e7a1"],
    )
    model: ModelRef
    predictions: list[Prediction] = Field(
        description="Entity predictions first (request order), then inline rows."
    )


RequestId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId = Field(description="A request_id returned by POST /predict.")
    index: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="The row of that request's predictions (0 for a one-row request).",
    )
    label: Literal[0, 1] = Field(description="The true label.")


class FeedbackRequest(BaseModel):
    """Ground-truth labels for earlier predictions, for live accuracy."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"feedback": [{"request_id": "3f1c0e2a9b7d4c55a1e0f6b2c9d8e7a1", "label": 1}]}
            ]
        },
    )

    feedback: list[FeedbackItem] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    accepted: int = Field(description="Labels queued for the request log.", examples=[1])


class ReloadResponse(BaseModel):
    """What a forced check of the registry's champion alias did."""

    status: Literal["loaded", "unchanged", "refused", "no_champion"]
    version: str | None = Field(description="The version the alias names (considered).")
    serving: str | None = Field(description="The version served after the check.")
    reason: str | None = Field(default=None, description="Why it was refused, or no champion.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelRef


class ViewRefOut(BaseModel):
    name: str = Field(examples=["card_features"])
    version: str = Field(examples=["3f2a9c1b"])


class ModelInfo(BaseModel):
    """The model being served and what it expects."""

    name: str = Field(examples=["fraud_detector"])
    version: str = Field(examples=["3"])
    alias: str = Field(description="The registry alias it was loaded from.", examples=["champion"])
    feature_names: list[str] = Field(
        description="Input columns, in order.", examples=[["amount", "amount_mean_24h"]]
    )
    feature_views: list[ViewRefOut] = Field(
        description="Feature views (at the versions trained on) that entity lookups read."
    )
    entity_key: str = Field(description="The entity column.", examples=["card_id"])
    onnx_sha256: str = Field(description="sha256 of the served model.onnx (verified).")
    signature: dict[str, Any] = Field(description="The ONNX graph's inputs and outputs.")
    loaded_at: datetime
