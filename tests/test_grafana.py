"""grafana/: the dashboards have the structure Grafana needs, every expression parses in a real
Prometheus, and the provisioning files, scrape configuration and rules pass their checks."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from promserver import Dataset, prometheus_dataset, require_binaries  # noqa: F401  (a fixture)

from estimator.serving import metrics

GRAFANA = Path(__file__).parent.parent / "grafana"
DASHBOARDS = {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}
ZEST_NAMES = {v for k, v in vars(metrics).items() if k.startswith("ZEST_") and v.startswith("zest_")}


def targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_both_dashboards_are_there() -> None:
    assert set(DASHBOARDS) == {"zest-fleet.json", "zest-job.json"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    inputs = dashboard["__inputs"]
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']} has no query"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_fleet_dashboard_shows_the_diagnoses() -> None:
    exprs = [t["expr"] for t in targets(DASHBOARDS["zest-fleet.json"])]
    assert f"sum by ({metrics.ZEST_DIAGNOSIS_LABEL}) ({metrics.ZEST_DIAGNOSIS})" in exprs  # jobs per rule
    assert f"{metrics.ZEST_DIAGNOSIS} == 1" in exprs  # which job shows which pattern


def test_job_dashboard_has_a_job_variable_used_by_every_query() -> None:
    dashboard = DASHBOARDS["zest-job.json"]
    job = next(v for v in dashboard["templating"]["list"] if v["name"] == "job")
    assert job["type"] == "query"
    assert job["query"]["query"] == f"label_values({metrics.ZEST_Z_EXPECTED}, {metrics.ZEST_JOB_LABEL})"
    for target in targets(dashboard):
        assert 'job_id="$job"' in target["expr"], target["expr"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_metric_a_dashboard_reads_is_one_zest_exports(name: str) -> None:
    from collectors.schema import SIGNALS
    from estimator.features.extract import FEATURES

    exported = ZEST_NAMES | {metrics.zest_feature_metric(f) for f in FEATURES}
    exported |= {metrics.zest_gpu_metric(s) for s in SIGNALS}
    for target in targets(DASHBOARDS[name]):
        for used in re.findall(r"\bzest_[a-z_]+", target["expr"]):
            assert used in exported, used


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_expression_parses_in_prometheus(name: str, prometheus_dataset: Dataset) -> None:  # noqa: F811
    for target in targets(DASHBOARDS[name]):
        expr = target["expr"].replace("$job", "slurm-4242")
        answer = requests.post(
            f"{prometheus_dataset.url}/api/v1/query", data={"query": expr}, timeout=10
        ).json()
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"


def test_rules_pass_promtool() -> None:
    _, promtool = require_binaries()
    checked = subprocess.run(
        [promtool, "check", "rules", str(GRAFANA / "zest.rules.yml")], capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = yaml.safe_load((GRAFANA / "zest.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    worth = next(a for a in alerts if a["alert"] == "ZestJobWorthTuningRunsUntuned")
    assert worth["for"] == "1d" and 'verdict="proceed"' in worth["expr"]


def test_scrape_configuration_passes_promtool(tmp_path: Path) -> None:
    _, promtool = require_binaries()
    checked = subprocess.run(
        [promtool, "check", "config", str(GRAFANA / "prometheus-scrape.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    scrape = yaml.safe_load((GRAFANA / "prometheus-scrape.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"][0].endswith(":10940")  # zest serve's default port


def test_provisioning_files() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "zest.yml").read_text())
    assert datasources["apiVersion"] == 1
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "zest.yml").read_text())
    assert providers["apiVersion"] == 1
    provider = providers["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
