"""infra/k8s/: the manifests and the GPU pool's Jobs, against the Kubernetes schemas.

Every resource of the kustomization is validated strictly (no unknown field) against the
OpenAPI-derived JSON schemas that ``kubernetes-validate`` ships (offline), for the oldest
and the newest Kubernetes minor the platform claims. The GPU pool's Jobs are rendered the
way the worker renders them: prefect-kubernetes' own job configuration, from the base
job template ``mlops deploy`` registers (fitted to the cluster by
``infra/k8s/gpu_pool_template.py``) and the GPU deployment's job variables, then
prepared for a flow run. Every ``MLOPS_*`` name the manifests set must be a setting of
:mod:`mlops.settings`, and the settings they make must load.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import prefect
import pytest
import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import Flow, FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration
from pydantic import BaseModel

from deployments import PROJECT_DIR, build_deployments
from deployments.pools import GPU_POOL_ENV, job_template, pool_plans
from mlops.cli.server import uvicorn_command
from mlops.settings import Settings

K8S_DIR = PROJECT_DIR / "infra" / "k8s"
K8S_VERSIONS = ("1.28", "1.37")
"""The oldest Kubernetes minor the manifests claim, and the newest the schemas cover."""
NAMESPACED = {
    "ConfigMap",
    "Deployment",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "Role",
    "RoleBinding",
    "Secret",
    "Service",
    "ServiceAccount",
}
DROPPED_POD_FIELDS = ("parallelism", "completions")
"""prefect-kubernetes requires these in the Job's *pod* spec (its default template has
them there); the API server drops them as unknown fields (server-side field validation
defaults to Warn), so the strict schema check runs without them."""


# --- loading ---------------------------------------------------------------------------


def _load_all(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def _kustomization() -> dict[str, Any]:
    (doc,) = _load_all(K8S_DIR / "kustomization.yaml")
    return doc


def _resources() -> list[tuple[str, dict[str, Any]]]:
    """(file, resource) for every resource the kustomization applies, in its order."""
    return [
        (name, doc) for name in _kustomization()["resources"] for doc in _load_all(K8S_DIR / name)
    ]


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, doc in _resources() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"infra/k8s: expected one {kind} {name!r}, found {len(found)}"
    return found[0]


EXAMPLES = ("secret.example.yaml", "nfs-pv.example.yaml")
"""Resources an operator fills in and applies by hand (docs/production.md)."""


def _example(name: str) -> dict[str, Any]:
    (doc,) = _load_all(K8S_DIR / name)
    return doc


def _secret_example() -> dict[str, Any]:
    return _example("secret.example.yaml")


def _pool_template_module() -> ModuleType:
    """infra/k8s/gpu_pool_template.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(
        "gpu_pool_template", K8S_DIR / "gpu_pool_template.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _env_from(container: dict[str, Any]) -> set[str]:
    """Names of the ConfigMaps and Secrets a container takes all its variables from."""
    return {(ref.get("configMapRef") or ref["secretRef"])["name"] for ref in container["envFrom"]}


def _validate(resource: dict[str, Any], version: str) -> None:
    """Strict validation; the message names the resource and the failing path."""
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(
            f"{resource['kind']} {resource['metadata'].get('name', '')!r} is not valid "
            f"Kubernetes {version}: {where}: {exc.message}"
        )


def _setting_env_names() -> set[str]:
    """Every ``MLOPS_*`` variable :class:`Settings` reads (groups joined by ``__``)."""
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        groups = [
            t
            for t in getattr(field.annotation, "__args__", (field.annotation,))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not groups:
            names.add(f"MLOPS_{field_name.upper()}")
        for group in groups:
            names.update(
                f"MLOPS_{field_name.upper()}__{inner.upper()}" for inner in group.model_fields
            )
    return names


# --- the kustomization and its resources -----------------------------------------------


def test_kustomization_names_existing_files_and_one_namespace() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert set(kustomization) <= known, (
        f"fields this test does not check: {set(kustomization) - known}"
    )
    for name in kustomization["resources"]:
        assert (K8S_DIR / name).is_file(), f"kustomization.yaml lists {name}, which is missing"
    for example in EXAMPLES:
        assert example not in kustomization["resources"], (
            f"{example} holds placeholders: applying it would overwrite the real one"
        )

    namespace = kustomization["namespace"]
    assert _find("Namespace", namespace)
    for name, doc in _resources():
        if doc["kind"] in NAMESPACED:
            assert doc["metadata"].get("namespace") == namespace, (
                f"{name}: {doc['kind']} {doc['metadata']['name']} is not in {namespace}"
            )
    # the image kustomize rewrites is the one the manifests and the GPU Jobs use
    (image,) = kustomization["images"]
    assert _container(_find("Deployment", "mlops-app"), "app")["image"] == image["name"]
    default_image = job_template("kubernetes", "gpu")["variables"]["properties"]["image"]
    assert default_image["default"].split(":")[0] == image["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_is_valid_for_kubernetes(version: str) -> None:
    resources = _resources()
    kinds = {doc["kind"] for _, doc in resources}
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    for doc in [*(doc for _, doc in resources), *map(_example, EXAMPLES)]:
        _validate(doc, version)


def test_the_data_claim_binds_to_the_nfs_volume() -> None:
    claim = _find("PersistentVolumeClaim", "mlops-data")
    volume = _example("nfs-pv.example.yaml")
    assert claim["spec"]["volumeName"] == volume["metadata"]["name"]
    assert volume["spec"]["claimRef"] == {
        "namespace": claim["metadata"]["namespace"],
        "name": claim["metadata"]["name"],
    }
    assert claim["spec"]["storageClassName"] == volume["spec"]["storageClassName"] == ""
    assert claim["spec"]["accessModes"] == volume["spec"]["accessModes"] == ["ReadWriteMany"]


def test_validation_catches_a_misspelt_field() -> None:
    """The schemas are strict: a typo in a manifest fails instead of being ignored."""
    app = copy.deepcopy(_find("Deployment", "mlops-app"))
    container = app["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(app, K8S_VERSIONS[-1], strict=True)


# --- settings ----------------------------------------------------------------------------


def test_every_mlops_variable_is_a_setting() -> None:
    known = _setting_env_names()
    assert "MLOPS_SERVING__API_TOKEN" in known and "MLOPS_ONLINE_STORE__URL" in known

    app = _container(_find("Deployment", "mlops-app"), "app")
    template = _pool_template_module().cluster_template()
    job_env = template["variables"]["properties"]["env"]["default"]
    sources = {
        "config.yaml": _find("ConfigMap", "mlops-config")["data"],
        "secret.example.yaml": _secret_example()["stringData"],
        "app.yaml": _env(app),
        "the GPU Jobs' env": job_env,
    }
    for where, names in sources.items():
        unknown = sorted(n for n in names if n.startswith("MLOPS_") and n not in known)
        assert not unknown, f"{where} sets {unknown}: no such setting in mlops/settings.py"


def _manifest_environment(token: str) -> dict[str, str]:
    """What the app's container sees: ConfigMap, then Secret, then its own env."""
    app = _container(_find("Deployment", "mlops-app"), "app")
    env = {
        **_find("ConfigMap", "mlops-config")["data"],
        **_secret_example()["stringData"],
        **{name: item["value"] for name, item in _env(app).items() if "value" in item},
    }
    env["MLOPS_SERVING__API_TOKEN"] = token
    return env


def test_the_example_secret_is_refused_until_its_token_is_set(
    clean_mlops_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _manifest_environment("change-me").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="MLOPS_SERVING__API_TOKEN is the placeholder"):
        Settings()


def test_the_manifests_make_production_settings(
    clean_mlops_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _manifest_environment(uuid.uuid4().hex)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()

    assert settings.environment == "production"
    assert settings.home == Path("/data")
    assert settings.online_store.type == "redis"
    assert settings.online_store.url == env["MLOPS_ONLINE_STORE__URL"]
    assert settings.request_log.url is not None
    assert settings.request_log.url.startswith("postgresql+psycopg://")
    assert settings.tracking_uri.startswith("http://")
    assert settings.prefect.api_url == env["PREFECT_API_URL"]
    assert settings.serving.host == "0.0.0.0"
    assert settings.orchestration.gpu_pool == "gpu"


# --- the inference app -----------------------------------------------------------------


def test_app_is_probed_on_ready_and_health_and_served_on_its_port(
    clean_mlops_env: Path,
) -> None:
    from app.main import create_app

    deployment = _find("Deployment", "mlops-app")
    container = _container(deployment, "app")
    (port,) = container["ports"]
    env = _env(container)
    assert port["name"] == "http"
    assert str(port["containerPort"]) == env["MLOPS_SERVING__PORT"]["value"]

    ready, live, startup = (
        container[p]["httpGet"] for p in ("readinessProbe", "livenessProbe", "startupProbe")
    )
    assert (ready["path"], ready["port"]) == ("/ready", "http")
    assert (live["path"], live["port"]) == ("/health", "http")
    assert (startup["path"], startup["port"]) == ("/health", "http")
    paths = create_app(Settings()).openapi()["paths"]
    for path in ("/ready", "/health", "/metrics"):
        assert "get" in paths.get(path, {}), f"the app has no GET {path}"

    # the same server command as `mlops serve` / `mlops up`, on every interface
    expected = uvicorn_command("0.0.0.0", port["containerPort"])
    assert container["command"] == ["python", *expected[1:]]

    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _find("Service", "mlops-app")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])

    # a rollout never removes a serving pod before its successor is ready
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert _env_from(container) == {"mlops-config", _secret_example()["metadata"]["name"]}


# --- the GPU pool's worker -------------------------------------------------------------


def _arg(command: list[str], option: str) -> str:
    assert option in command, f"the worker's command lacks {option}: {command}"
    return command[command.index(option) + 1]


def test_worker_polls_the_kubernetes_gpu_pool(clean_mlops_env: Path) -> None:
    deployment = _find("Deployment", "prefect-worker-gpu")
    container = _container(deployment, "worker")
    command = container["command"]
    gpu_plan = pool_plans(Settings(), "kubernetes")[1]

    assert command[:3] == ["prefect", "worker", "start"]
    assert _arg(command, "--pool") == gpu_plan.name == "gpu"
    assert _arg(command, "--type") == gpu_plan.type == "kubernetes"
    assert "--no-create-pool-if-not-found" in command
    assert _arg(command, "--install-policy") == "never"
    # the worker speaks the platform's Prefect version
    assert container["image"].split(":")[1].startswith(f"{prefect.__version__}-")

    env = _env(container)
    api = env["PREFECT_API_URL"]["valueFrom"]["configMapKeyRef"]
    assert api["name"] == "mlops-config"
    assert api["key"] in _find("ConfigMap", "mlops-config")["data"]
    observed = env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["valueFrom"]
    assert observed == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "--with-healthcheck" in command
    live = container["livenessProbe"]["httpGet"]
    (port,) = container["ports"]
    assert (live["path"], live["port"]) == ("/health", port["name"])
    assert str(port["containerPort"]) == env["PREFECT_WORKER_WEBSERVER_PORT"]["value"]


def test_worker_may_do_what_the_kubernetes_worker_does() -> None:
    deployment = _find("Deployment", "prefect-worker-gpu")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert _find("ServiceAccount", account)
    binding = _find("RoleBinding", "prefect-worker")
    assert {"kind": "ServiceAccount", "name": account, "namespace": "mlops"} in binding["subjects"]
    role = _find(binding["roleRef"]["kind"], binding["roleRef"]["name"])

    def allowed(group: str, resource: str) -> set[str]:
        return {
            verb
            for rule in role["rules"]
            if group in rule["apiGroups"] and resource in rule["resources"]
            for verb in rule["verbs"]
        }

    # prefect_kubernetes.worker creates and deletes Jobs; its observer watches Jobs and
    # pods and posts events; crashed runs' logs are read from the pods
    assert {"create", "get", "list", "watch", "delete"} <= allowed("batch", "jobs")
    assert {"get", "list", "watch"} <= allowed("", "pods")
    assert "get" in allowed("", "pods/log")
    assert {"create", "list", "watch"} <= allowed("", "events")
    assert not allowed("", "secrets"), "the worker needs no access to Secrets"


# --- the GPU pool's Jobs -----------------------------------------------------------------


def _gpu_deployment_job_variables() -> dict[str, Any]:
    settings = Settings()
    (gpu,) = [
        d
        for d in build_deployments(settings)
        if d.work_pool_name == settings.orchestration.gpu_pool
    ]
    return dict(gpu.job_variables)


def _render_job(template: dict[str, Any], values: dict[str, Any], api_url: str) -> dict[str, Any]:
    """The Job manifest the Kubernetes worker submits for a flow run of ``values``.

    The client is never used: rendering asks the API only for blocks and variables the
    template references, and it references none (a template that did would fail here).
    """

    async def render() -> KubernetesWorkerJobConfiguration:
        client = PrefectClient(api="http://127.0.0.1:9/api")
        return await KubernetesWorkerJobConfiguration.from_template_and_values(
            base_job_template=template, values=values, client=client
        )

    with temporary_settings({PREFECT_API_URL: api_url}):
        configuration = asyncio.run(render())
        flow_run = FlowRun(id=uuid.uuid4(), name="brisk-otter", flow_id=uuid.uuid4())
        flow = Flow(id=flow_run.flow_id, name="train", labels={})
        configuration.prepare_for_flow_run(flow_run, flow=flow)
    return configuration.job_manifest


def _strictly_valid_job(manifest: dict[str, Any], version: str) -> None:
    job = copy.deepcopy(manifest)
    pod = job["spec"]["template"]["spec"]
    for field in DROPPED_POD_FIELDS:
        assert pod.pop(field) == 1
    _validate(job, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_gpu_jobs_render_to_valid_jobs_that_request_gpus(
    clean_mlops_env: Path, version: str
) -> None:
    module = _pool_template_module()
    template = module.cluster_template(image="registry.example.com/mlops-platform:1.0")
    job_variables = {**_gpu_deployment_job_variables(), "gpu_count": 2, "memory_limit": "32Gi"}
    # what the Prefect server checks when a deployment or a flow run sets job variables
    jsonschema.validate(job_variables, template["variables"])
    api_url = _find("ConfigMap", "mlops-config")["data"]["PREFECT_API_URL"]

    manifest = _render_job(template, job_variables, api_url)
    _strictly_valid_job(manifest, version)

    assert manifest["metadata"]["namespace"] == _kustomization()["namespace"]
    assert manifest["metadata"]["generateName"] == "brisk-otter-"
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "32Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert container["image"] == "registry.example.com/mlops-platform:1.0"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env[GPU_POOL_ENV] == "gpu"
    assert env["MLOPS_HOME"] == module.DATA_PATH
    assert env["PREFECT_API_URL"] == api_url
    assert manifest["spec"]["backoffLimit"] == 0

    # everything the Job refers to is in infra/k8s
    assert _find("ServiceAccount", pod["serviceAccountName"])
    assert _env_from(container) == {
        _find("ConfigMap", "mlops-config")["metadata"]["name"],
        _secret_example()["metadata"]["name"],
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert _find("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {module.DATA_PATH: "data", "/dev/shm": "shm"}


def test_the_gpu_pool_template_keeps_every_variable_of_the_registered_one() -> None:
    registered = job_template("kubernetes", "gpu")
    fitted = _pool_template_module().cluster_template(pool="gpu")
    assert set(fitted["variables"]["properties"]) == set(registered["variables"]["properties"])
    # only defaults change; the pool still names itself for the GPU limit
    defaults = {k: v.get("default") for k, v in fitted["variables"]["properties"].items()}
    assert defaults["namespace"] == "mlops"
    assert defaults["env"] == {GPU_POOL_ENV: "gpu", "MLOPS_HOME": "/data"}
    assert registered["variables"]["properties"]["namespace"]["default"] == "default"


def test_the_gpu_pool_template_script_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    module = _pool_template_module()
    assert module.main(["--pool", "a100", "--namespace", "ml", "--image", "r/m:2"]) == 0
    template = json.loads(capsys.readouterr().out)
    variables = template["variables"]["properties"]
    assert variables["namespace"]["default"] == "ml"
    assert variables["image"]["default"] == "r/m:2"
    assert variables["env"]["default"][GPU_POOL_ENV] == "a100"


def test_the_registered_template_renders_for_the_kubernetes_worker(
    clean_mlops_env: Path,
) -> None:
    manifest = _render_job(
        job_template("kubernetes", "gpu"), _gpu_deployment_job_variables(), "http://p:4200/api"
    )
    _strictly_valid_job(manifest, K8S_VERSIONS[-1])


def test_no_manifest_reads_the_environment_of_this_machine() -> None:
    """Values are literal (no ${VAR} that only a shell would expand)."""
    for name in [*_kustomization()["resources"], *EXAMPLES]:
        text = (K8S_DIR / name).read_text(encoding="utf-8")
        assert "${" not in text, f"{name} has a shell-style ${{…}} that kubectl does not expand"


# --- the same platform as docker-compose.yml -------------------------------------------


def test_the_cluster_app_runs_like_the_compose_app() -> None:
    """Same command, same user, every setting the compose services share, and the same
    values wherever they name no host and no secret."""
    with (PROJECT_DIR / "docker-compose.yml").open(encoding="utf-8") as fh:
        compose = yaml.safe_load(fh)
    compose_env: dict[str, str] = compose["x-platform-env"]
    app = _container(_find("Deployment", "mlops-app"), "app")
    cluster_env = {
        **_find("ConfigMap", "mlops-config")["data"],
        **_secret_example()["stringData"],
        **{name: item.get("value", "") for name, item in _env(app).items()},
    }

    missing = sorted(set(compose_env) - set(cluster_env))
    assert not missing, f"docker-compose.yml's services get {missing}; infra/k8s's app does not"
    for name in (
        "MLOPS_ENVIRONMENT",
        "MLOPS_HOME",
        "MLOPS_MLFLOW__ARTIFACT_ROOT",
        "MLOPS_ONLINE_STORE__TYPE",
        "PREFECT_LOCAL_STORAGE_PATH",
    ):
        assert cluster_env[name] == compose_env[name], name
    assert app["command"] == compose["services"]["app"]["command"]

    dockerfile = (PROJECT_DIR / "infra" / "Dockerfile").read_text(encoding="utf-8")
    (user,) = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    for name in ("mlops-app", "prefect-worker-gpu"):
        context = _find("Deployment", name)["spec"]["template"]["spec"]["securityContext"]
        assert f"{context['runAsUser']}:{context['runAsGroup']}" == user, name
