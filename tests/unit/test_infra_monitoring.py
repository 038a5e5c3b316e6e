"""Prometheus configuration and alert rules, Grafana provisioning and dashboard.

Every metric a rule or a panel queries must be one the platform exports: the names
come from the real app's ``GET /metrics`` (``create_app`` with its lifespan, on embedded
defaults), Prometheus's own series (``up``, ``ALERTS``) and the process figures
Prefect's ``/api/metrics`` renders. PromQL is parsed with ``promql-parser`` (the
Prometheus parser's Rust port). ``promtool`` (Debian's ``prometheus`` package) checks
the configuration and the rules and runs the rules' unit tests
(``infra/prometheus/tests``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from mlops.settings import MonitoringSettings, Settings
from tests._compose import ROOT

PROMETHEUS = ROOT / "infra" / "prometheus"
GRAFANA = ROOT / "infra" / "grafana"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
RULE_SERIES = {"ALERTS", "ALERTS_FOR_STATE"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _sample_names(exposition: str) -> set[str]:
    """The series names an exposition can hold (a counter ``x`` is ``x_total``, ...)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


@pytest.fixture(scope="module")
def app_metrics(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What the real app exports at the path Prometheus scrapes, families without
    samples included (their HELP/TYPE lines)."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "app"]
    home = tmp_path_factory.mktemp("metrics") / "home"
    settings = Settings(home=home, _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        client.post("/predict", json={"rows": [{"x": 1.0}]})  # 503: no champion yet
        response = client.get(job["metrics_path"])
    assert response.status_code == 200
    names = _sample_names(response.text)
    assert "mlops_http_requests_total" in names
    return names


@pytest.fixture(scope="module")
def prefect_metrics() -> set[str]:
    """Prefect's /api/metrics renders the default registry: process and GC figures."""
    return _sample_names(generate_latest(REGISTRY).decode())


@pytest.fixture(scope="module")
def known(app_metrics: set[str], prefect_metrics: set[str]) -> set[str]:
    return app_metrics | prefect_metrics | SCRAPE_SERIES | RULE_SERIES


def _selectors(expr: str) -> list[tuple[str | None, dict[str, str]]]:
    """The metric names (and equality matchers) an expression reads."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    found: list[tuple[str | None, dict[str, str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: m.value for m in node.matchers.matchers}
            found.append((node.name or matchers.get("__name__"), matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_the_selector_check_can_fail(known: set[str]) -> None:
    [(name, _)] = _selectors('rate(mlops_http_request_total{route="/predict"}[5m])')
    assert name not in known  # a typo: the counter is mlops_http_requests_total
    with pytest.raises(ValueError):
        _selectors("sum(rate(mlops_http_requests_total[5m])")


# --- Prometheus -------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _mounts(service: str) -> dict[str, str]:
    """Container path → checkout path of a service's bind mounts."""
    mounts = {}
    for volume in _compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_prometheus_reads_the_mounted_rules_and_scrapes_the_app_and_prefect(
    app_metrics: set[str],
) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    mounts = _mounts("prometheus")
    assert mounts["/etc/prometheus/prometheus.yml"] == "infra/prometheus/prometheus.yml"
    for pattern in config["rule_files"]:
        folder, _, glob = pattern.rpartition("/")
        assert folder in mounts, f"{pattern}: its folder is not mounted"
        assert sorted((ROOT / mounts[folder]).glob(glob)) == RULES and RULES
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["app"]["metrics_path"] == "/metrics"
    assert jobs["app"]["static_configs"][0]["targets"] == ["app:8000"]
    # (app_metrics scrapes the app at this path)
    assert jobs["prefect"]["metrics_path"] == "/api/metrics"
    assert jobs["prefect"]["static_configs"][0]["targets"] == ["prefect:4200"]
    prefect_env = _compose()["services"]["prefect"]["environment"]
    assert prefect_env["PREFECT_SERVER_METRICS_ENABLED"] == "true", "else /api/metrics is 404"


def test_every_rule_is_well_formed_and_reads_exported_metrics(known: set[str]) -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Mlops[A-Z][A-Za-z0-9]+", name), name
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        selectors = _selectors(rule["expr"])
        assert selectors, f"{name} reads no series"
        for metric, _ in selectors:
            assert metric in known, f"{name} reads {metric!r}, which nothing exports"


def _rule(name: str) -> dict[str, Any]:
    [rule] = [r for r in _rules() if r["alert"] == name]
    return rule


def test_the_alerts_the_issue_asks_for_exist_on_the_right_metrics() -> None:
    wanted = {
        "MlopsHighErrorRate": "mlops_http_requests_total",
        "MlopsHighP99Latency": "mlops_http_request_duration_seconds_bucket",
        "MlopsModelLoadRefused": "mlops_model_loads_total",
        "MlopsRequestLogSpoolGrowing": "mlops_request_log_spool_bytes",
        "MlopsDriftShareHigh": "mlops_model_drift_share",
    }
    for alert, metric in wanted.items():
        assert metric in {m for m, _ in _selectors(_rule(alert)["expr"])}, alert
    assert "histogram_quantile(0.99" in _rule("MlopsHighP99Latency")["expr"]
    refused = _selectors(_rule("MlopsModelLoadRefused")["expr"])[0][1]
    assert refused["result"] == "refused"


def test_monitoring_thresholds_equal_the_settings_defaults() -> None:
    """The monitor emits its events at these values; the alerts must agree."""
    defaults = MonitoringSettings()
    drift = re.search(r">=\s*([\d.]+)\s*$", _rule("MlopsDriftShareHigh")["expr"].strip())
    accuracy = re.search(r"<\s*([\d.]+)\s*$", _rule("MlopsLiveAccuracyLow")["expr"].strip())
    assert drift and float(drift.group(1)) == defaults.drift_share_threshold
    assert accuracy and float(accuracy.group(1)) == defaults.min_live_accuracy


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    return found


def test_promtool_accepts_the_configuration_and_the_rules(tmp_path: Path) -> None:
    # the configuration names the rules by their path in the container
    config = (PROMETHEUS / "prometheus.yml").read_text()
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/rules", str(PROMETHEUS / "rules")))
    for args in (["check", "config", str(local)], ["check", "rules", *map(str, RULES)]):
        result = subprocess.run(
            [_promtool(), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_fire_when_their_unit_tests_say() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    result = subprocess.run(
        [_promtool(), "test", "rules", *map(str, tests)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROMETHEUS / "tests",
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ------------------------------------------------------------------------------------


def _provisioned_datasource() -> dict[str, Any]:
    path = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
    [source] = yaml.safe_load(path.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    return dict(source)


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_grafana_provisions_the_datasource_and_the_mounted_dashboards() -> None:
    mounts = _mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == "infra/grafana/provisioning"
    [provider] = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "mlops.yml").read_text()
    )["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == "infra/grafana/dashboards"
    source = _provisioned_datasource()
    assert source["url"] == "http://prometheus:9090"
    home = _compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (ROOT / mounts[provider["options"]["path"]] / Path(home).name).is_file()
    assert DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_reads_exported_metrics_from_the_provisioned_source(
    path: Path, known: set[str]
) -> None:
    dashboard = json.loads(path.read_text())
    uid = _provisioned_datasource()["uid"]
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    queries = 0
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]
            for metric, _ in _selectors(target["expr"]):
                assert metric in known, f"{panel['title']}: {metric!r} is exported by nothing"
            queries += 1
    assert queries >= 20


def test_panels_do_not_overlap() -> None:
    for path in DASHBOARDS:
        taken: set[tuple[int, int]] = set()
        for panel in json.loads(path.read_text())["panels"]:
            box = panel["gridPos"]
            assert box["x"] + box["w"] <= 24, panel["title"]
            cells = {
                (x, y)
                for x in range(box["x"], box["x"] + box["w"])
                for y in range(box["y"], box["y"] + box["h"])
            }
            assert not cells & taken, f"{path.name}: {panel['title']} overlaps another panel"
            taken |= cells


def test_the_dashboard_shows_what_the_issue_lists() -> None:
    """Requests, latency percentiles, predictions by class, model version over time,
    online-store latency, the spool; plus drift share."""
    dashboard = json.loads((GRAFANA / "dashboards" / "mlops.json").read_text())
    exprs = {
        panel["title"]: [t["expr"] for t in panel["targets"]]
        for panel in _panels(dashboard)
        if panel["type"] != "row"
    }
    flat = {title: " ".join(found) for title, found in exprs.items()}

    def shown(pattern: str) -> list[str]:
        return [title for title, text in flat.items() if re.search(pattern, text)]

    assert shown(r"rate\(mlops_http_requests_total")
    latency = shown(r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(mlops_http_request_duration")
    assert latency and any("0.5" in flat[t] and "0.9" in flat[t] for t in latency)
    assert shown(r"sum by \([^)]*label[^)]*\) \(rate\(mlops_predictions_total")
    versions = [
        p for p in _panels(dashboard) if "mlops_model_info" in " ".join(exprs.get(p["title"], []))
    ]
    assert any(p["type"] == "state-timeline" for p in versions)
    assert shown(r"mlops_online_store_read_seconds_bucket")
    assert shown(r"mlops_request_log_spool_bytes")
    assert shown(r"mlops_model_drift_share")
