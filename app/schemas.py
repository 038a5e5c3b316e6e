"""Request and response bodies of the serving API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StringConstraints, model_validator

EntityKey = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class PredictRequest(BaseModel):
    """Score entities by key (features from the online store), inline rows, or both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"entities": ["card_00001", "card_00042"]},
                {"rows": [{"amount": 12.5, "amount_mean_24h": 30.1, "events_count_1h": 2}]},
            ]
        },
    )

    entities: list[EntityKey] | None = Field(
        default=None,
        description="Entity keys (values of the model's entity_key) whose features are read "
        "from the online store.",
        examples=[["card_00001", "card_00042"]],
    )
    rows: list[dict[str, FiniteFloat]] | None = Field(
        default=None,
        description="Raw feature rows, each holding exactly the model's feature_names "
        "(see GET /model). Scaling happens inside the model.",
        examples=[[{"amount": 12.5, "amount_mean_24h": 30.1, "events_count_1h": 2}]],
    )

    @model_validator(mode="after")
    def _not_empty(self) -> PredictRequest:
        if not self.entities and not self.rows:
            raise ValueError("give at least one of 'entities' or 'rows', non-empty")
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
