"""prefect.yaml, the deployments in code and the work pools' base job templates."""

from __future__ import annotations

import importlib
import inspect
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.templating import apply_values, find_placeholders

from deployments import (
    LIFECYCLE_FLOWS,
    PROJECT_DIR,
    build_deployments,
    cleanup_trigger,
    retrain_trigger,
)
from deployments.agreement import load_prefect_yaml, summarize_code, summarize_yaml
from deployments.pools import (
    GPU_POOL_ENV,
    TEMPLATE_FILES,
    TEMPLATES_DIR,
    gpu_limit_name,
    job_template,
    pool_plans,
)
from mlops.errors import ConfigurationError
from mlops.events import MODEL_DRIFT_DETECTED, MODEL_PERFORMANCE_DEGRADED
from mlops.settings import Settings

CONTRACT = {
    "materialize/card_transactions",
    "train/fraud_detector",
    "train/fraud_detector-gpu",
    "evaluate/fraud_detector",
    "monitor/fraud_detector",
    "retrain/fraud_detector",
    "cleanup/crashed",
}


def _flow(entrypoint: str) -> Any:
    path, function = entrypoint.split(":")
    assert (PROJECT_DIR / path).is_file(), f"entrypoint {entrypoint}: no file {path}"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, function)


def _defaults(template: dict[str, Any]) -> dict[str, Any]:
    properties = template["variables"]["properties"]
    return {name: spec["default"] for name, spec in properties.items() if "default" in spec}


def test_prefect_yaml_declares_the_contract_deployments() -> None:
    config = load_prefect_yaml()
    records = summarize_yaml(config)

    assert set(records) == CONTRACT
    assert len(config["deployments"]) == len(CONTRACT), "a deployment is declared twice"
    assert {r["work_pool"] for r in records.values()} == {"local", "gpu"}
    assert records["train/fraud_detector-gpu"]["work_pool"] == "gpu"
    assert records["train/fraud_detector-gpu"]["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/mlops"}}
    ]
    crons = {name: [s["cron"] for s in r["schedules"]] for name, r in records.items()}
    assert crons == {
        "materialize/card_transactions": ["5 * * * *"],
        "train/fraud_detector": [],
        "train/fraud_detector-gpu": [],
        "evaluate/fraud_detector": [],
        "monitor/fraud_detector": ["15 * * * *"],
        "retrain/fraud_detector": ["0 3 * * 1"],
        "cleanup/crashed": [],
    }
    assert all(s["timezone"] == "UTC" for r in records.values() for s in r["schedules"])
    assert records["retrain/fraud_detector"]["concurrency"] == {
        "limit": 1,
        "collision_strategy": "CANCEL_NEW",
    }


@pytest.mark.parametrize("entry", load_prefect_yaml()["deployments"], ids=lambda e: e["name"])
def test_every_entrypoint_is_a_flow_that_takes_its_parameters(entry: dict[str, Any]) -> None:
    flow = _flow(entry["entrypoint"])
    accepted = set(inspect.signature(flow.fn).parameters)
    declared = set(entry.get("parameters") or {})
    for trigger in entry.get("triggers") or []:
        declared |= set(trigger.get("parameters") or {})

    assert flow.name == entry["entrypoint"].rsplit(":", 1)[1], "deployment key is <flow>/<name>"
    assert declared <= accepted, f"{entry['entrypoint']} does not take {declared - accepted}"
    required = {
        name
        for name, p in inspect.signature(flow.fn).parameters.items()
        if p.default is inspect.Parameter.empty
    }
    left = required - set(entry.get("parameters") or {})
    if left:  # every run then comes from a trigger that gives them (cleanup/crashed)
        triggers = entry.get("triggers") or []
        assert triggers and all(left <= set(t.get("parameters") or {}) for t in triggers), left
    else:
        flow.validate_parameters(entry.get("parameters") or {})  # types fit the signature


def test_code_and_prefect_yaml_declare_the_same_deployments(clean_mlops_env: Path) -> None:
    code = summarize_code(build_deployments(Settings()))
    declared = summarize_yaml()

    assert set(code) == set(declared)
    differences = [
        f"{name}.{field}: code {code[name][field]!r} != prefect.yaml {value!r}"
        for name, record in declared.items()
        for field, value in record.items()
        if code[name][field] != value
    ]
    assert not differences, "\n".join(differences)


def test_code_follows_the_orchestration_settings(
    clean_mlops_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_ORCHESTRATION__LOCAL_POOL", "cpu-pool")
    monkeypatch.setenv("MLOPS_ORCHESTRATION__GPU_POOL", "a100")
    monkeypatch.setenv("MLOPS_ORCHESTRATION__TIMEZONE", "Europe/Paris")
    code = summarize_code(build_deployments(Settings()))

    assert code["train/fraud_detector-gpu"]["work_pool"] == "a100"
    assert code["monitor/fraud_detector"]["work_pool"] == "cpu-pool"
    assert code["retrain/fraud_detector"]["schedules"][0]["timezone"] == "Europe/Paris"


def test_retrain_trigger_fires_once_per_burst_and_passes_the_event() -> None:
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    trigger = retrain_trigger("fraud_detector")
    assert trigger.posture.value == "Reactive"
    assert trigger.threshold == 1
    assert trigger.within.total_seconds() >= 3600, "the cooldown is the trigger's window"
    assert trigger.expect == {MODEL_DRIFT_DETECTED, MODEL_PERFORMANCE_DEGRADED}
    assert trigger.match.model_dump() == {"prefect.resource.id": "mlops.model.fraud_detector"}

    # what the server's RunDeployment action does with the parameters when it fires
    parameters = json.loads(json.dumps(trigger.parameters))
    RunDeployment._upgrade_v1_templates(parameters)
    event = {"event": MODEL_DRIFT_DETECTED, "payload": {"drift_share": 0.5, "columns": ["a"]}}
    rendered = hydrate(
        parameters, HydrationContext(render_jinja=True, jinja_context={"event": event})
    )
    assert rendered == {
        "model_name": "fraud_detector",
        "reason": MODEL_DRIFT_DETECTED,
        "event_payload": {"drift_share": 0.5, "columns": ["a"]},
    }


def test_cleanup_trigger_takes_crashes_of_lifecycle_flow_runs_only() -> None:
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    from flows.cleanup import flow_run_uuid

    trigger = cleanup_trigger()
    on_server = EventTrigger.model_validate(
        trigger.model_dump(
            include={"match", "match_related", "after", "expect", "for_each", "posture"}
        )
        | {"threshold": trigger.threshold, "within": trigger.within}
    )
    run_id = uuid.uuid4()

    def event(name: str, flow_name: str) -> ReceivedEvent:
        return ReceivedEvent(
            occurred=datetime.now(UTC),
            event=name,
            resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"},
            related=[
                {
                    "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow_name,
                },
                {"prefect.resource.id": "prefect.tag.mlops", "prefect.resource.role": "tag"},
            ],
            id=uuid.uuid4(),
        )

    assert on_server.immediate  # every crash starts its own cleanup run
    for flow_name in LIFECYCLE_FLOWS:
        assert on_server.covers(event("prefect.flow-run.Crashed", flow_name)), flow_name
    assert not on_server.covers(event("prefect.flow-run.Crashed", "cleanup"))  # no chain
    assert not on_server.covers(event("prefect.flow-run.Failed", "train"))

    parameters = json.loads(json.dumps(trigger.parameters))
    RunDeployment._upgrade_v1_templates(parameters)
    rendered = hydrate(
        parameters,
        HydrationContext(
            render_jinja=True,
            jinja_context={"event": event("prefect.flow-run.Crashed", "train")},
        ),
    )
    assert flow_run_uuid(rendered["flow_run_id"]) == run_id


@pytest.mark.parametrize("pool_type", sorted(TEMPLATE_FILES))
def test_job_templates_are_valid_base_job_templates(pool_type: str) -> None:
    import jsonschema
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads((TEMPLATES_DIR / TEMPLATE_FILES[pool_type]).read_text())
    validate_base_job_template(template)  # the server's own check
    variables = template["variables"]
    placeholders = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    missing = placeholders - set(variables["properties"])
    assert not missing, f"{pool_type}: placeholders without a variable: {missing}"
    unused = set(variables["properties"]) - placeholders
    assert not unused, f"{pool_type}: variables no placeholder uses: {unused}"
    jsonschema.Draft202012Validator.check_schema(variables)
    jsonschema.validate(_defaults(template), variables)
    for name, spec in variables["properties"].items():
        assert spec.get("description"), f"{pool_type}: variable {name} has no description"


def test_docker_gpu_template_requests_the_gpus_and_names_the_pool() -> None:
    template = job_template("docker", "a100")
    config = apply_values(template["job_configuration"], {**_defaults(template), "gpu_count": 2})

    assert config["container_create_kwargs"]["device_requests"] == [
        {"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}
    ]
    assert config["env"] == {GPU_POOL_ENV: "a100"}
    assert config["image"] == "mlops-platform:latest"


def test_kubernetes_gpu_template_limits_gpus_with_node_selector_and_tolerations() -> None:
    template = job_template("kubernetes", "gpu")
    properties = template["variables"]["properties"]
    assert {"gpu_count", "node_selector", "tolerations"} <= set(properties)

    on_h100 = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    values = {**_defaults(template), "gpu_count": 4, "node_selector": on_h100}
    manifest = apply_values(template["job_configuration"], values)["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]

    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert pod["nodeSelector"] == on_h100
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert properties["env"]["default"] == {GPU_POOL_ENV: "gpu"}


def test_pool_plans_follow_the_settings(clean_mlops_env: Path) -> None:
    plans = pool_plans(Settings(), "kubernetes")
    assert [(p.name, p.type) for p in plans] == [("local", "process"), ("gpu", "kubernetes")]
    assert gpu_limit_name("gpu") == "gpu:gpu"

    with pytest.raises(ConfigurationError, match="unknown GPU pool type 'slurm'"):
        pool_plans(Settings(), "slurm")  # type: ignore[arg-type]
    same = Settings.model_validate({"orchestration": {"local_pool": "x", "gpu_pool": "x"}})
    with pytest.raises(ConfigurationError, match="need two names"):
        pool_plans(same)
