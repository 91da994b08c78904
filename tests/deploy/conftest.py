"""Deployment checks: rendered kustomize overlays; the metrics and settings the server itself reports."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
# labels Prometheus or the ServiceMonitor put on every scraped series (not the server's own)
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint", "le"}
# a metric name in PromQL: flowmap_..., not part of a recording rule name (flowmap:...) or a longer word
METRIC = re.compile(r"(?<![\w:])flowmap_[a-z0-9_]+(?![\w:])")


@functools.cache
def render(overlay: str) -> str:
    """`kubectl kustomize deploy/k8s/overlays/OVERLAY` (skips when kubectl is missing)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the machine image ships it at /usr/bin/kubectl)")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def resources(overlay: str) -> dict[str, dict]:
    """The rendered resources by kind (each kind appears once per overlay)."""
    docs = [d for d in yaml.safe_load_all(render(overlay)) if d]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"{overlay}: a kind appears twice: {kinds}"
    return {d["kind"]: d for d in docs}


def container(overlay: str) -> dict:
    (c,) = resources(overlay)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


@functools.cache
def server_series() -> dict[str, frozenset[str]]:
    """Every sample name the server's metrics module renders, with its label names.

    Each metric is recorded once through server.common.metrics' own recording methods, then rendered in the
    Prometheus text format and parsed, so renaming a metric or a label there changes this."""
    from prometheus_client.parser import text_string_to_metric_families

    from server.common.metrics import Metrics
    from server.common.stats import IterationStats, Rejection, RequestStats

    m = Metrics()
    m.build_info("0", "eager", "off")
    m.iteration(
        IterationStats(
            "digits", rows=2, samples=1, seconds=0.01, queue_depth=0, in_flight=1, ok=False, freed=[0.01]
        )
    )
    m.request(RequestStats("digits", steps=1, status=200, seconds=0.01, queue_seconds=0.001))
    m.reject(Rejection("queue_full", "digits"))
    m.core_restarted("digits")
    m.set_cores_up(1)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    # *_created exists only in single-process mode: the real server (multiprocess) never exports it
    return {
        k: frozenset(v) for k, v in out.items() if k.startswith("flowmap_") and not k.endswith("_created")
    }


def check_expr(expr: str, where: str) -> list[str]:
    """Problems with one PromQL expression: metric names the server does not export, labels it never sets."""
    series = server_series()
    names = METRIC.findall(expr)
    problems = [f"{where}: unknown metric {n}" for n in names if n not in series]
    known = set(TARGET_LABELS).union(*(series[n] for n in names if n in series))
    for label in labels_in(expr):
        if label not in known:
            problems.append(f"{where}: label {label!r} is not on {sorted(set(names))}")
    return problems


def labels_in(expr: str) -> set[str]:
    """Label names in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)` and `{...}` matchers."""
    found: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        found.update(x.strip() for x in group.split(",") if x.strip())
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        found.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return found


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def rule_groups() -> list[dict]:
    return load_yaml(DEPLOY / "prometheus" / "flowmap-rules.yaml")["groups"]


def rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"]]


def dashboard() -> dict:
    import json

    return json.loads((DEPLOY / "grafana" / "flowmap.json").read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every dashboard panel."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus runs it with every variable on All."""
    return expr.replace("$__rate_interval", "1m").replace('"$namespace"', '".*"').replace('"$model"', '".*"')


def adapter_rules() -> list[dict]:
    return load_yaml(DEPLOY / "prometheus-adapter" / "config.yaml")["rules"]


def adapter_query(rule: dict, namespace: str, pods: list[str]) -> str:
    """The PromQL prometheus-adapter runs for the HPA's pods metric (its Go template, filled in)."""
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")
