"""A real Prometheus scrapes two flowmap replicas on loopback under load, with the shipped scrape job + rules.

It queries Prometheus's HTTP API for the p99 across both replicas (histogram_quantile over summed
buckets), the HPA's per-pod metric as prometheus-adapter computes it, every dashboard query and every
rule, and asserts each returns data: scale-out aggregation shown, not claimed."""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
import threading
import time

import httpx
import pytest
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    adapter_query,
    adapter_rules,
    container,
    dashboard,
    dashboard_exprs,
    grafana_to_promql,
    load_yaml,
    resources,
    rules,
)
from tests.integration.conftest import AUTH, KEY, ServerProcess, checkpoints, free_port  # noqa: F401

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (Debian's prometheus package: make sysdeps)"
)
NAMESPACE = "flowmap"
PODS = ("flowmap-0", "flowmap-1")
# alerts whose left-hand side is legitimately empty on healthy replicas (the series appear only once a
# 429, an engine-core restart or a failing network call happens); they must still evaluate without error
EMPTY_WHEN_HEALTHY = {"FlowmapShedding", "FlowmapEngineCoreRestarts", "FlowmapEngineFailures"}


@pytest.fixture(scope="module")
def replicas(checkpoints):  # noqa: F811
    args = [
        "--model",
        str(checkpoints["digits"]),
        "--engine",
        "eager",
        "--max-steps",
        "4",
        "--api-workers",
        "1",
    ]
    servers = [ServerProcess(args, env={"FLOWMAP_API_KEY": KEY}) for _ in PODS]
    try:
        yield [s.wait_ready() for s in servers]
    finally:
        for s in servers:
            s.stop()


def scrape_config(replicas, tmp_path) -> dict:
    """deploy/prometheus/prometheus.yml with its Kubernetes discovery replaced by the two loopback replicas,
    labelled with the __meta_kubernetes_* labels pod discovery would give them, so the job's own relabel
    rules (keep, namespace, pod) run unchanged. Scrape and rule evaluation every second."""
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    (job,) = config["scrape_configs"]
    job.pop("kubernetes_sd_configs")
    port_name = container("cpu")["ports"][0]["name"]
    app = resources("cpu")["Deployment"]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    job["static_configs"] = [
        {
            "targets": [s.url.removeprefix("http://")],
            "labels": {
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
                "__meta_kubernetes_pod_container_port_name": port_name,
                "__meta_kubernetes_namespace": NAMESPACE,
                "__meta_kubernetes_pod_name": pod,
            },
        }
        for s, pod in zip(replicas, PODS, strict=True)
    ]
    job["metrics_path"] = resources("cpu")["ServiceMonitor"]["spec"]["endpoints"][0]["path"]
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    return config


@pytest.fixture(scope="module")
def prometheus(replicas, tmp_path_factory):
    d = tmp_path_factory.mktemp("prometheus")
    (d / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(replicas, d)))
    port = free_port()
    log = open(d / "prometheus.log", "w+")
    cmd = [PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(url + "/-/ready", timeout=1).status_code == 200, 30, "prometheus ready", log
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(check, timeout: float, what: str, log=None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except (httpx.TransportError, AssertionError, KeyError, IndexError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}" + (f": {open(log.name).read()}" if log else ""))


def query(url: str, expr: str) -> list[dict]:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", f"{expr}: {r}"
    return r["data"]["result"]


def values(result: list[dict]) -> list[float]:
    return [float(s["value"][1]) for s in result]


def put_load(replicas, seconds: float = 6.0, workers: int = 4) -> dict[tuple[str, int], int]:
    """Requests at steps 1-4 on both replicas for a few scrape intervals; counts by (pod, status)."""
    counts: dict[tuple[str, int], int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(i: int) -> None:
        with httpx.Client(headers=AUTH, timeout=30) as c:
            for n in itertools.count(i):
                if time.monotonic() > end:
                    return
                pod, server = PODS[n % 2], replicas[n % 2]
                body = {"steps": 1 + n % 4, "num_samples": 1 + n % 8, "seed": n}
                if n % 25 == 0:  # a few turned away, so rejections by reason have data too
                    body = {"model": "nope", "steps": 1} if n % 50 == 0 else {"steps": 99}
                status = c.post(server.url + "/v1/generate", json=body).status_code
                with lock:
                    counts[pod, status] = counts.get((pod, status), 0) + 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


@pytest.fixture(scope="module")
def loaded(replicas, prometheus):
    """Both targets up, then load, then every request seen by Prometheus and the rules evaluated."""
    wait_for(
        lambda: sorted(values(query(prometheus, 'up{job="flowmap"}'))) == [1.0, 1.0], 20, "both targets up"
    )
    counts = put_load(replicas)
    ok = sum(n for (_, status), n in counts.items() if status == 200)
    expr = 'sum(flowmap_request_duration_seconds_count{status="200"})'
    wait_for(lambda: values(query(prometheus, expr)) == [ok], 15, f"{ok} requests in Prometheus")
    time.sleep(2.5)  # two more rule evaluations after the last scrape
    return counts


def test_probe_and_metrics_paths_answer(replicas):
    """The manifests' probe and scrape paths, requested from the running server."""
    c = container("cpu")
    for s in replicas:
        assert httpx.get(s.url + c["livenessProbe"]["httpGet"]["path"]).status_code == 200
        assert httpx.get(s.url + c["readinessProbe"]["httpGet"]["path"]).status_code == 200
        assert httpx.get(s.url + c["startupProbe"]["httpGet"]["path"]).status_code == 200
        path = resources("cpu")["ServiceMonitor"]["spec"]["endpoints"][0]["path"]
        assert "flowmap_build_info" in httpx.get(s.url + path).text


def test_targets_carry_the_pod_and_namespace_labels(prometheus, loaded):
    up = query(prometheus, 'up{job="flowmap"}')
    assert sorted(s["metric"]["pod"] for s in up) == sorted(PODS)
    assert {s["metric"]["namespace"] for s in up} == {NAMESPACE}


def test_p99_across_both_replicas(prometheus, loaded):
    """Buckets summed over both replicas: the count is every 200 sent to either, the p99 is one number."""
    per_pod = query(prometheus, 'sum by (pod) (flowmap_request_duration_seconds_count{status="200"})')
    sent = {pod: sum(n for (p, status), n in loaded.items() if p == pod and status == 200) for pod in PODS}
    assert {s["metric"]["pod"]: float(s["value"][1]) for s in per_pod} == sent
    assert min(sent.values()) >= 12, sent
    bucket = 'rate(flowmap_request_duration_seconds_bucket{status="200"}[1m])'
    (p99,) = values(query(prometheus, f"histogram_quantile(0.99, sum by (le) ({bucket}))"))
    assert 0 < p99 < 30
    by_steps = query(prometheus, f"histogram_quantile(0.99, sum by (le, steps) ({bucket}))")
    assert sorted(s["metric"]["steps"] for s in by_steps) == ["1", "2", "3", "4"]
    assert all(math.isfinite(v) and v > 0 for v in values(by_steps))


def test_hpa_metric_per_pod(prometheus, loaded):
    """What prometheus-adapter serves the HPA: one finite value per pod."""
    (rule,) = adapter_rules()
    result = query(prometheus, adapter_query(rule, NAMESPACE, list(PODS)))
    assert sorted(s["metric"]["pod"] for s in result) == sorted(PODS)
    assert all(math.isfinite(v) and v >= 0 for v in values(result)), result


@pytest.mark.parametrize(
    "title,expr", dashboard_exprs(), ids=[f"{t}#{i}" for i, (t, _) in enumerate(dashboard_exprs())]
)
def test_dashboard_query_has_data(prometheus, loaded, title, expr):
    result = query(prometheus, grafana_to_promql(expr))
    assert result, f"{title}: no data for {expr}"
    if not title.startswith("Build info"):
        assert any(math.isfinite(v) for v in values(result)), f"{title}: only NaN: {result}"


def test_dashboard_variables_have_values(prometheus, loaded):
    for var in dashboard()["templating"]["list"][1:]:
        label, selector = parse_label_values(grafana_to_promql(var["definition"]))
        got = httpx.get(f"{prometheus}/api/v1/label/{label}/values", params={"match[]": selector}).json()[
            "data"
        ]
        assert got, var["name"]
    assert NAMESPACE in got or "digits" in got


def parse_label_values(definition: str) -> tuple[str, str]:
    """label_values(SELECTOR, LABEL) -> (LABEL, SELECTOR)."""
    inner = definition.strip().removeprefix("label_values(").removesuffix(")")
    selector, label = inner.rsplit(",", 1)
    return label.strip(), selector.strip()


def test_rules_evaluate_and_record(prometheus, loaded):
    """Prometheus loaded the shipped rules and evaluated each without error; the recording rules have data."""
    groups = httpx.get(prometheus + "/api/v1/rules").json()["data"]["groups"]
    evaluated = {r.get("name"): r for g in groups for r in g["rules"]}
    shipped = {r.get("alert") or r["record"] for r in rules()}
    assert set(evaluated) == shipped
    for name, r in evaluated.items():
        assert r["health"] == "ok" and not r.get("lastError"), (name, r)
    for r in rules():
        if "record" in r:
            assert query(prometheus, r["record"]), f"recording rule {r['record']} has no data"


def test_alert_expressions(prometheus, loaded):
    """The left-hand side of every alert has data, except those listed as empty while healthy; none fires."""
    alerts = {r["alert"]: r["expr"] for r in rules() if "alert" in r}
    assert EMPTY_WHEN_HEALTHY <= set(alerts)
    for name, expr in alerts.items():
        lhs = expr.rsplit(">", 1)[0] if ">" in expr else expr.rsplit("==", 1)[0]
        result = query(prometheus, lhs)
        assert bool(result) == (name not in EMPTY_WHEN_HEALTHY), (name, lhs, result)
    firing = httpx.get(prometheus + "/api/v1/alerts").json()["data"]["alerts"]
    assert not [a for a in firing if a["state"] == "firing"], firing
