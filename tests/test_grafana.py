"""grafana/: the dashboards have the structure Grafana needs, every expression parses in a real
Prometheus, and the provisioning files, scrape configuration and rules pass their checks."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import yaml
from promserver import Dataset, prometheus_dataset, require_binaries  # noqa: F401  (a fixture)

from estimator.serving import metrics
from estimator.serving.config import T_DEFAULT

GRAFANA = Path(__file__).parent.parent / "grafana"
DASHBOARDS = {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}
ZEST_NAMES = {v for k, v in vars(metrics).items() if k.startswith("ZEST_") and v.startswith("zest_")}


DETAIL_ROW = "needs [serve] detail = true"  # in the title of the row above the panels that need it


def targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for panel in dashboard["panels"] for t in panel.get("targets", [])]


def panels_by_row(dashboard: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The panels above the first Detail row (data by default), and those below it (need the switch)."""
    default: list[dict[str, Any]] = []
    detail: list[dict[str, Any]] = []
    below = False
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            below = below or DETAIL_ROW in panel["title"]
            continue
        (detail if below else default).append(panel)
    return default, detail


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
        if panel["type"] == "row":  # a heading: no query; a Detail row says what its panels need
            assert DETAIL_ROW in panel["title"] and not panel.get("targets")
            continue
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


def test_each_metric_name_is_written_once_in_the_code() -> None:
    """A metric name lives in estimator.serving.metrics only; the code uses the constant."""
    code = [p.read_text() for d in ("estimator", "collectors") for p in (GRAFANA.parent / d).rglob("*.py")]
    for name in ZEST_NAMES:
        copies = sum(len(re.findall(rf"[\"']{name}[\"']", text)) for text in code)
        assert copies == 1, f"{name} is written {copies} times"


def test_z_break_is_shown_against_each_algorithms_own_z() -> None:
    """Verdicts compare an algorithm's own Z (its share of Z_e) with its Z_break: so does every panel that
    plots Z_break; Z_break reaches thousands of %, so the axis is logarithmic, with a line at 100 %."""
    plotted = 0
    for dashboard in DASHBOARDS.values():
        for panel in dashboard["panels"]:
            exprs = [t["expr"] for t in panel.get("targets", [])]
            if not any(metrics.ZEST_Z_BREAK in e for e in exprs):
                continue
            defaults = panel["fieldConfig"]["defaults"]
            if panel["type"] == "table":  # a column of ratios, shown as %
                overrides = {
                    o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]
                }
                assert overrides["Z_break"] == [{"id": "unit", "value": "percentunit"}]
                continue
            plotted += 1
            assert any(metrics.ZEST_Z_ALGORITHM in e for e in exprs), panel["title"]
            assert not any(metrics.ZEST_Z_EXPECTED in e for e in exprs), panel["title"]
            assert defaults["unit"] == "percentunit"
            assert defaults["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
            assert [step["value"] for step in defaults["thresholds"]["steps"]] == [None, 1]
            assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
    assert plotted == 2  # the fleet's and the job's


def test_gpu_hours_at_stake_count_each_job_once_by_its_recommendation() -> None:
    exprs = [
        t["expr"]
        for t in targets(DASHBOARDS["zest-fleet.json"])
        if metrics.ZEST_GPU_TIME_AT_STAKE in t["expr"]
    ]
    by_recommendation = (
        f"sum by ({metrics.ZEST_RECOMMENDATION_LABEL}) ({metrics.ZEST_GPU_TIME_AT_STAKE}) / 3600"
    )
    assert by_recommendation in exprs
    assert not any(metrics.ZEST_VERDICT_LABEL in e for e in exprs)  # a job reaches several verdicts


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_units_fit_their_queries(name: str) -> None:
    """A counter is shown as a count over a window (increase), never in a panel whose unit is seconds."""
    for panel in DASHBOARDS[name]["panels"]:
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for target in panel.get("targets", []):
            expr = target["expr"]
            if "_total" in expr or "rate(" in expr:
                assert unit not in ("s", "ms", "dtdurations"), f"{panel['title']}: {expr} in {unit}"
                assert "increase(" in expr, expr


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
    assert f'{metrics.ZEST_DURATION}{{{metrics.ZEST_T_SOURCE_LABEL}!="{T_DEFAULT}"}}' in worth["expr"]


def test_the_worth_tuning_alert_fires_only_where_t_is_known(tmp_path: Path) -> None:
    """A day of "proceed": the alert fires for the jobs whose T is configured or Slurm's, not for the one
    at the built-in default T (its verdict rests on a guessed T)."""
    _, promtool = require_binaries()
    minutes = 25 * 60  # a day and an hour of one sample a minute
    series = []
    alerts = []
    for job, source in [("by-config", "config"), ("by-slurm", "slurm"), ("at-default", T_DEFAULT)]:
        series += [
            {"series": f'{metrics.ZEST_VERDICT}{{job_id="{job}", algorithm="heuristic", verdict="proceed"}}',
             "values": f"1x{minutes}"},
            {"series": f'{metrics.ZEST_DURATION}{{job_id="{job}", {metrics.ZEST_T_SOURCE_LABEL}="{source}"}}',
             "values": f"86400x{minutes}"},
            {"series": f'{metrics.ZEST_NET_SAVING}{{job_id="{job}", algorithm="heuristic"}}',
             "values": f"7200x{minutes}"},
        ]  # fmt: skip
        if source != T_DEFAULT:
            description = (
                f"zest expects tuning job {job} to save more GPU time than it costs (best expected net "
                "saving: 2h 0m 0s of GPU time). See the zest job dashboard."
            )
            alerts.append(
                {
                    "exp_labels": {"job_id": job, "severity": "info"},
                    "exp_annotations": {
                        "summary": f"Job {job} has run for a day with tuning expected to pay",
                        "description": description,
                    },
                }
            )
    check = {
        "rule_files": [str(GRAFANA / "zest.rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "23h", "alertname": "ZestJobWorthTuningRunsUntuned", "exp_alerts": []},
                    {"eval_time": "25h", "alertname": "ZestJobWorthTuningRunsUntuned", "exp_alerts": alerts},
                ],
            }
        ],
    }
    path = tmp_path / "zest.rules.test.yml"
    path.write_text(yaml.safe_dump(check))
    tested = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


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


def test_jobs_without_t_are_ranked_by_the_bounds_of_their_elapsed_time() -> None:
    """Where T is not configured (t_source default on T), the fleet ranks jobs by the GPU-hours one run saves
    at least and shows R_break at the elapsed time; net savings and verdicts count only jobs whose T is
    configured; every such panel says where its figures come from. All of it without the detail switch."""
    label = metrics.ZEST_T_SOURCE_LABEL
    not_set = f'{metrics.ZEST_DURATION}{{{label}="{T_DEFAULT}"}}'
    is_set = f'{metrics.ZEST_DURATION}{{{label}!="{T_DEFAULT}"}}'
    panels, _ = panels_by_row(DASHBOARDS["zest-fleet.json"])
    bounds = next(
        p for p in panels if any(metrics.ZEST_RUN_SAVING_LOWER_BOUND in t["expr"] for t in p["targets"])
    )
    exprs = [t["expr"] for t in bounds["targets"]]
    assert exprs[0].startswith("sort_desc(topk(25, ") and metrics.ZEST_RUN_SAVING_LOWER_BOUND in exprs[0]
    assert any(metrics.ZEST_R_BREAK_AT_ELAPSED in e for e in exprs)
    assert not any(metrics.ZEST_ELAPSED in e for e in exprs)  # a detail series
    assert all(not_set in e for e in exprs)
    assert "elapsed time" in bounds["title"] and "at most" in bounds["description"]
    assert bounds["options"]["sortBy"][0]["desc"] is True
    ranked = 0
    for panel in panels:
        for target in panel["targets"]:
            if metrics.ZEST_NET_SAVING in target["expr"] or "proceed" in target["expr"]:
                if "by (algorithm, verdict)" in target["expr"]:
                    continue  # the verdicts' own chart
                assert is_set in target["expr"], (panel["title"], target["expr"])
                assert "T configured" in panel["title"], panel["title"]
                ranked += 1
    assert ranked == 3  # the net saving stat, the jobs worth tuning, the ranking
    assert any(
        metrics.ZEST_R_BREAK_AT_ELAPSED in e and not_set in e and "<= 1" in e
        for p in panels
        for e in [t["expr"] for t in p["targets"]]
    )


def test_job_dashboard_shows_the_elapsed_time_and_its_bounds() -> None:
    default, detail = panels_by_row(DASHBOARDS["zest-job.json"])
    exprs = " ".join(t["expr"] for p in default for t in p["targets"])
    for name in (metrics.ZEST_R_BREAK_AT_ELAPSED, metrics.ZEST_RUN_SAVING_LOWER_BOUND, metrics.ZEST_DURATION):
        assert f'{name}{{job_id="$job"}}' in exprs
    duration = next(t for p in default for t in p["targets"] if metrics.ZEST_DURATION in t["expr"])
    assert "{{t_source}}" in duration["legendFormat"]  # where T came from
    assert f'{metrics.ZEST_ELAPSED}{{job_id="$job"}}' in " ".join(
        t["expr"] for p in detail for t in p["targets"]
    )


def exported_names(detail: bool) -> set[str]:
    """The names of the families a rendered export has, with ``[serve] detail`` on or off (example jobs)."""
    from collections import Counter

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from collectors.sources import example_jobs, read_job
    from estimator.decision.algorithms import capture_shares
    from estimator.features.extract import summarize_gpus
    from estimator.model.default import default_model, z_intervals_for
    from estimator.serving.collector import ExporterState, ZestCollector, estimate_jobs
    from estimator.serving.config import ServeConfig

    frames = [read_job("example", j).frame for j in example_jobs()]
    summary = summarize_gpus(pd.concat(frames, ignore_index=True))
    shares = capture_shares(default_model().capture_shares())
    state = ExporterState("prometheus")
    state.publish(
        estimate_jobs(summary, ServeConfig(detail=detail), z_intervals_for, shares, taken_at_seconds=1.0), 0.5
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, coverage_ratio=0.8, version="test"))
    names: Counter[str] = Counter()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names[family.name] += 1  # a family with no sample yet (no diagnosis fires) is still exported
        names.update(sample.name for sample in family.samples)
    return set(names)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_default_panels_read_default_series_and_detail_panels_sit_in_a_detail_row(name: str) -> None:
    """Every panel above the Detail row reads only series zest exports without ``[serve] detail``, so it has
    data by default; every panel below it reads a series that needs the switch."""
    default_names, detail_names = exported_names(False), exported_names(True)
    default, detail = panels_by_row(DASHBOARDS[name])
    rows = [p for p in DASHBOARDS[name]["panels"] if p["type"] == "row"]
    assert len(rows) == 1 and DETAIL_ROW in rows[0]["title"]
    assert rows[0]["gridPos"]["y"] >= max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in default)
    assert all(p["gridPos"]["y"] > rows[0]["gridPos"]["y"] for p in detail)
    for panel in default:
        for target in panel["targets"]:
            for used in re.findall(r"\bzest_[a-z_]+", target["expr"]):
                assert used in default_names, (panel["title"], used)
    assert detail
    for panel in detail:
        used = {u for t in panel["targets"] for u in re.findall(r"\bzest_[a-z_]+", t["expr"])}
        assert used <= detail_names and used - default_names, (panel["title"], used)
