"""Print the `gpu` pool's base job template fitted to this cluster (JSON on stdout).

``mlops deploy --gpu-pool-type kubernetes`` registers the GPU pool with the template in
``deployments/job_templates/kubernetes-gpu.json``: a Job per flow run that limits
``nvidia.com/gpu``, with a node selector and tolerations. What that template cannot know
is the cluster: which namespace the Jobs go to (the worker's Role covers ``mlops``), the
service account of their pods, where their settings come from and where the data is.
This script takes the registered template (the same function ``mlops deploy`` uses) and
sets those, so the pool's Jobs run in ``infra/k8s/``'s namespace with:

- ``envFrom`` the ConfigMap ``mlops-config`` and the Secret ``mlops-secrets`` (MLflow,
  Redis, Postgres, the token: the settings the app also reads);
- ``MLOPS_HOME=/data`` on the ReadWriteMany claim ``mlops-data`` (raw events, the
  offline store): a training reads the files materialization wrote;
- ``/dev/shm`` in memory (PyTorch data loaders and torchrun exchange tensors there);
- the image of your registry.

Apply it after ``mlops deploy`` (and again after ``mlops deploy --update-pools``, which
resets the template)::

    python infra/k8s/gpu_pool_template.py --image registry.example.com/mlops-platform:1.0 \\
        > gpu-pool.json
    prefect work-pool update gpu --base-job-template gpu-pool.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from deployments.pools import job_template

NAMESPACE = "mlops"
SERVICE_ACCOUNT = "mlops-gpu-job"
CONFIG_MAP = "mlops-config"
SECRET = "mlops-secrets"
DATA_CLAIM = "mlops-data"
DATA_PATH = "/data"
SHM_SIZE = "8Gi"


def cluster_template(
    *,
    pool: str = "gpu",
    namespace: str = NAMESPACE,
    service_account: str = SERVICE_ACCOUNT,
    config_map: str = CONFIG_MAP,
    secret: str = SECRET,
    data_claim: str = DATA_CLAIM,
    image: str | None = None,
    shm_size: str = SHM_SIZE,
) -> dict[str, Any]:
    """The Kubernetes GPU pool's template with this cluster's namespace, identity,
    settings and volumes; every variable of the registered template stays a variable
    (deployments and flow runs still override ``gpu_count``, ``node_selector``, …)."""
    template = job_template("kubernetes", pool)
    variables = template["variables"]["properties"]
    variables["namespace"]["default"] = namespace
    variables["service_account_name"]["default"] = service_account
    variables["env"]["default"] = {**variables["env"]["default"], "MLOPS_HOME": DATA_PATH}
    if image:
        variables["image"]["default"] = image

    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    # prefect-kubernetes' worker refuses a Job manifest whose pod spec lacks these two
    # (its own default template has them there; the API server drops them);
    # kubernetes-gpu.json carries them, a template edited by hand may not.
    pod.setdefault("parallelism", 1)
    pod.setdefault("completions", 1)
    pod["volumes"] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": data_claim}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
    ]
    (container,) = pod["containers"]
    container["envFrom"] = [
        {"configMapRef": {"name": config_map}},
        {"secretRef": {"name": secret}},
    ]
    container["volumeMounts"] = [
        {"name": "data", "mountPath": DATA_PATH},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    return template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the gpu work pool's base job template for this cluster, for "
        "`prefect work-pool update gpu --base-job-template FILE`.",
        epilog="Example: python infra/k8s/gpu_pool_template.py "
        "--image registry.example.com/mlops-platform:1.0 > gpu-pool.json",
    )
    parser.add_argument(
        "--pool", default="gpu", help="GPU work pool (MLOPS_ORCHESTRATION__GPU_POOL)"
    )
    parser.add_argument("--namespace", default=NAMESPACE, help="namespace of the Jobs")
    parser.add_argument(
        "--service-account", default=SERVICE_ACCOUNT, help="service account of the Jobs' pods"
    )
    parser.add_argument("--config-map", default=CONFIG_MAP, help="ConfigMap of the settings")
    parser.add_argument("--secret", default=SECRET, help="Secret of the secret settings")
    parser.add_argument(
        "--data-claim", default=DATA_CLAIM, help=f"ReadWriteMany claim mounted at {DATA_PATH}"
    )
    parser.add_argument(
        "--image",
        default=None,
        help="image of the Jobs (default: the template's, mlops-platform:latest)",
    )
    parser.add_argument("--shm-size", default=SHM_SIZE, help="size of /dev/shm (in memory)")
    args = parser.parse_args(argv)
    template = cluster_template(
        pool=args.pool,
        namespace=args.namespace,
        service_account=args.service_account,
        config_map=args.config_map,
        secret=args.secret,
        data_claim=args.data_claim,
        image=args.image,
        shm_size=args.shm_size,
    )
    sys.stdout.write(json.dumps(template, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
