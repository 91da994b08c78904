"""Prometheus rules, scrape config, prometheus-adapter rule and Grafana dashboard: promtool, and every metric
name and label they use checked against what the server's metrics module exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    adapter_query,
    adapter_rules,
    check_expr,
    dashboard,
    dashboard_exprs,
    load_yaml,
    rules,
    server_series,
)

PROM = DEPLOY / "prometheus"


def promtool(*args: str, cwd=PROM) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian's prometheus package: make sysdeps)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule, dashboard query and variable, and the adapter's query."""
    out = [(r.get("alert") or r["record"], r["expr"]) for r in rules()]
    out += [(f"dashboard: {title}", expr) for title, expr in dashboard_exprs()]
    out += [
        (f"dashboard variable {v['name']}", v["definition"]) for v in dashboard()["templating"]["list"][1:]
    ]
    out += [(f"adapter {r['name']['as']}", adapter_query(r, "flowmap", ["a", "b"])) for r in adapter_rules()]
    out += [(f"adapter {r['name']['as']} seriesQuery", r["seriesQuery"]) for r in adapter_rules()]
    return out


def test_promtool_check_rules():
    out = promtool("check", "rules", "flowmap-rules.yaml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests():
    """Each alert fires on the synthetic input it is for and stays quiet on healthy input."""
    out = promtool("test", "rules", "flowmap-rules.test.yaml")
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_promtool_check_config(tmp_path):
    """The scrape config and the rules it loads. Debian's Prometheus is built without Kubernetes service
    discovery, so the job's kubernetes_sd_configs is swapped for an equivalent static target first."""
    config = load_yaml(PROM / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_metric_and_label_is_the_servers():
    """Renaming a metric or a label in server/common/metrics.py (or misspelling one here) fails this."""
    problems = [p for where, expr in all_exprs() for p in check_expr(expr, where)]
    assert not problems, "\n".join(problems)


def test_the_check_can_fail():
    assert check_expr("rate(flowmap_request_duration_total[5m])", "x") == [
        "x: unknown metric flowmap_request_duration_total"
    ]
    assert check_expr('sum by (stepz) (flowmap_queue_depth{model="a"})', "x")
    assert not check_expr('sum by (pod, model) (flowmap_queue_depth{namespace="n"})', "x")


def test_dashboard_covers_the_issue_list():
    """Latency p50/p99 by steps, samples per engine call, queue wait and depth, rejections by reason,
    engine failures, build info: each has a panel."""
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needed in (
        "histogram_quantile(0.5, sum by (le, steps) (rate(flowmap_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, steps) (rate(flowmap_request_duration_seconds_bucket",
        "flowmap_batch_samples_sum",
        "flowmap_queue_wait_seconds_bucket",
        "flowmap_queue_depth",
        "sum by (reason) (rate(flowmap_rejections_total",
        "flowmap_engine_failures_total",
        "flowmap_build_info",
    ):
        assert needed in exprs, needed
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_the_issue_list():
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    uses = lambda name, text: text in alerts[name]["expr"] or text in recorded(alerts[name]["expr"])
    assert uses("FlowmapHighLatencyP99", "flowmap_request_duration_seconds_bucket")
    assert uses("FlowmapHighErrorRatio", 'status=~"5.."')
    assert uses("FlowmapQueueSaturated", "flowmap_queue_depth")
    assert uses("FlowmapEngineCoreRestarts", "flowmap_engine_core_restarts_total")
    assert uses("FlowmapReadinessFlapping", "flowmap_engine_cores_up")
    for name, r in alerts.items():
        assert r["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= set(r["annotations"]), name
        assert r["annotations"]["runbook"] == f"docs/deploy.md#{name.lower()}", name


def recorded(expr: str) -> str:
    """The expressions of the recording rules an expression refers to."""
    return " ".join(r["expr"] for r in rules() if "record" in r and r["record"] in expr)


def test_queue_threshold_matches_the_configured_max_queue_ms():
    """The saturation rule divides the predicted queue wait (seconds) by FLOWMAP_MAX_QUEUE_MS; they agree."""
    (fill,) = [r for r in rules() if r.get("record") == "flowmap:queue_depth:fill_ratio"]
    lines = (DEPLOY / "k8s/base/flowmap.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    assert "flowmap_queue_depth_seconds" in fill["expr"]
    bound = float(re.search(r"/ ([\d.]+)$", fill["expr"].strip()).group(1))
    assert bound == float(env["FLOWMAP_MAX_QUEUE_MS"]) / 1000


def test_hpa_metric_is_per_pod():
    (rule,) = adapter_rules()
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert "flowmap_queue_wait_seconds_bucket" in server_series()
    assert "by (le, <<.GroupBy>>)" in rule["metricsQuery"]


def test_prometheus_rule_wraps_the_same_rules():
    """The Operator's PrometheusRule is printed from flowmap-rules.yaml, so the two cannot drift apart."""
    out = subprocess.run(
        ["bash", str(PROM / "prometheusrule.sh"), "release=kube-prometheus-stack"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    doc = yaml.safe_load(out.stdout)
    assert doc["kind"] == "PrometheusRule" and doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert doc["spec"] == load_yaml(PROM / "flowmap-rules.yaml")


def test_every_alert_has_a_runbook_section():
    """docs/deploy.md has a heading per alert, so each alert's runbook link lands on what to do."""
    docs = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", docs, re.M)}
    for r in rules():
        if "alert" in r:
            assert r["alert"].lower() in headings, r["alert"]


def test_hpa_metric_on_synthetic_series(tmp_path):
    """promtool evaluates the adapter's query as the adapter fills it in: a busy pod reads its p90 queue
    wait, an idle pod (no requests in the window) reads 0 rather than NaN, which the HPA could not average."""
    (rule,) = adapter_rules()
    series = 'flowmap_queue_wait_seconds_{}{{namespace="flowmap",pod="{}",model="digits"{}}}'
    inputs = []
    for pod, per_min in (("busy", 60), ("idle", 0)):
        for le in ("0.004", "0.008", "+Inf"):
            rate = per_min if le != "0.004" else per_min // 2  # half wait under 4 ms, the rest under 8 ms
            inputs.append({"series": series.format("bucket", pod, f',le="{le}"'), "values": f"100+{rate}x10"})
        inputs.append({"series": series.format("count", pod, ""), "values": f"100+{per_min}x10"})
    expected = [{"labels": '{pod="busy"}', "value": 0.0072}, {"labels": '{pod="idle"}', "value": 0}]
    test = {
        "rule_files": [str(PROM / "flowmap-rules.yaml")],
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {
                        "expr": adapter_query(rule, "flowmap", ["busy", "idle"]),
                        "eval_time": "5m",
                        "exp_samples": expected,
                    }
                ],
            }
        ],
    }
    (tmp_path / "hpa.test.yaml").write_text(yaml.safe_dump(test))
    out = promtool("test", "rules", "hpa.test.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
