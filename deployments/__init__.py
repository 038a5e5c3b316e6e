"""Deployments defined in code, named as DESIGN.md fixes them.

``materialize/<view>`` for every feature view (code and ``features.yaml``; incremental),
``train/<model>`` and ``evaluate/<model>`` for every model spec.
:func:`build_deployments` returns them unapplied; ``mlops deploy`` registers them with
the Prefect API, and ``mlops deploy --serve`` also runs them in this process (a Prefect
runner) so the Prefect UI and ``prefect deployment run`` can start flow runs.
Schedules, event triggers and work pools come with ``prefect.yaml``.
"""

from __future__ import annotations

from typing import Any

from mlops.settings import Settings
from mlops.specs import SPECS, all_views, get_spec


def build_deployments(settings: Settings) -> list[Any]:
    """One ``RunnerDeployment`` per flow and model spec / feature view."""
    from flows.evaluate import evaluate
    from flows.materialize import materialize
    from flows.train import train

    deployments: list[Any] = []
    views = {view.name: view.description for view in all_views(settings)}
    for spec_name in SPECS:
        spec = get_spec(spec_name, settings)
        deployments.append(
            train.to_deployment(
                name=spec.name,
                parameters={"model_name": spec.name},
                description=f"Train {spec.name} and register it as challenger.",
                tags=["mlops", f"model:{spec.name}"],
            )
        )
        deployments.append(
            evaluate.to_deployment(
                name=spec.name,
                parameters={"model_name": spec.name},
                description=f"Evaluate {spec.name}'s challenger; promote through the gates.",
                tags=["mlops", f"model:{spec.name}"],
            )
        )
    for view_name, description in views.items():
        deployments.append(
            materialize.to_deployment(
                name=view_name,
                parameters={"view_name": view_name, "mode": "incremental"},
                description=(description or f"Materialize {view_name}.")
                + " Incremental: from the last materialized day.",
                tags=["mlops", f"view:{view_name}"],
            )
        )
    return deployments
