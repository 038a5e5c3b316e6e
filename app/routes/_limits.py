"""The 422 that a body over ``MLOPS_SERVING__MAX_BATCH_ROWS`` gets, shared by routes."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError


def over_batch_limit(
    loc: tuple[str, ...], count: int, what: str, limit: int
) -> RequestValidationError:
    """``count`` ``what`` (e.g. "rows") in the body at ``loc`` are over ``limit``."""
    return RequestValidationError(
        [
            {
                "type": "too_long",
                "loc": loc,
                "msg": f"{count} {what} exceed the limit of {limit} "
                "(MLOPS_SERVING__MAX_BATCH_ROWS)",
                "input": None,
                "ctx": {"max_length": limit},
            }
        ]
    )
