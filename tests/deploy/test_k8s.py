"""The kustomize overlays: rendered, validated offline against Kubernetes schemas, checked with the server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from server.common.settings import ServerSettings
from tests.deploy.conftest import DEPLOY, OVERLAYS, ROOT, container, load_yaml, render, resources

# Kinds from CRDs: kubernetes-validate ships only the core Kubernetes schemas, so these are checked
# structurally below (test_service_monitor_scrapes_the_server) instead.
CRD_KINDS = {"ServiceMonitor"}
# oldest and newest Kubernetes minor versions validated against (schemas ship with kubernetes-validate)
K8S_VERSIONS = ("1.29.0", "1.37.0")


def kubernetes_validate(path, version: str) -> tuple[int, str]:
    exe = shutil.which("kubernetes-validate", path=str(ROOT / ".venv/bin")) or shutil.which(
        "kubernetes-validate"
    )
    if exe is None:
        pytest.skip("kubernetes-validate is not installed (pyproject's dev extra)")
    out = subprocess.run(
        [exe, "--strict", "-k", version, str(path)], capture_output=True, text=True, timeout=120
    )
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay, version, tmp_path):
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render(overlay))
    rc, out = kubernetes_validate(path, version)
    assert rc == 0, out
    kinds = resources(overlay)
    passed = set(re.findall(r"passed for resource (\w+)/", out))
    assert passed == {k.lower() for k in kinds} - {k.lower() for k in CRD_KINDS}, out
    assert set(re.findall(r"find schema for kind (\w+)", out)) == CRD_KINDS & set(kinds), out


def test_strict_validation_catches_a_misspelt_field(tmp_path):
    """The check above can fail: an unknown field (readinesProbe) is refused in strict mode."""
    path = tmp_path / "bad.yaml"
    path.write_text(render("cpu").replace("readinessProbe:", "readinesProbe:"))
    rc, out = kubernetes_validate(path, K8S_VERSIONS[-1])
    assert rc != 0 and "readinesProbe" in out, out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_is_what_the_server_accepts(overlay, monkeypatch):
    """Every FLOWMAP_* variable is a settings field, and the server's settings accept the whole set."""
    fields = {f"FLOWMAP_{name.upper()}" for name in ServerSettings.model_fields}
    env = dict(resources(overlay)["ConfigMap"]["data"])
    env.update({e["name"]: e.get("value", "from-a-secret") for e in container(overlay)["env"]})
    flowmap_env = {k: v for k, v in env.items() if k.startswith("FLOWMAP_")}
    assert set(flowmap_env) <= fields, set(flowmap_env) - fields
    for k in [k for k in os.environ if k.startswith("FLOWMAP_")]:
        monkeypatch.delenv(k)
    for k, v in flowmap_env.items():
        monkeypatch.setenv(k, v)
    s = ServerSettings()
    assert s.host == "0.0.0.0" and s.key() == "from-a-secret"
    ports = {p["name"]: p["containerPort"] for p in container(overlay)["ports"]}
    assert ports == {"http": s.port, "probes": s.health_port}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_key_comes_from_a_secret(overlay):
    (key,) = [e for e in container(overlay)["env"] if e["name"] == "FLOWMAP_API_KEY"]
    assert set(key) == {"name", "valueFrom"} and "secretKeyRef" in key["valueFrom"]
    assert "FLOWMAP_API_KEY" not in resources(overlay)["ConfigMap"]["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_point_at_the_health_routes(overlay):
    """Liveness on /healthz; startup and readiness on /readyz (503 while starting, draining, a core down).

    The live test in test_prometheus.py requests these same paths from a running server."""
    c = container(overlay)  # on the probe port (FLOWMAP_HEALTH_PORT): never queued behind request work
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_drain(overlay):
    """SIGKILL never cuts a drain short: preStop + drain timeout + the supervisor's bounds after it."""
    from server.supervisor import KILL_GRACE

    r = resources(overlay)
    pod = r["Deployment"]["spec"]["template"]["spec"]
    drain = float(r["ConfigMap"]["data"]["FLOWMAP_DRAIN_TIMEOUT_S"])
    (sleep,) = re.findall(
        r"^sleep (\d+)$", " ".join(container(overlay)["lifecycle"]["preStop"]["exec"]["command"])
    )
    api_exit = 10  # server/supervisor.py _shutdown: API processes get drain_timeout_s + 10 s to exit
    assert pod["terminationGracePeriodSeconds"] >= int(sleep) + drain + api_exit + KILL_GRACE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_locked_down(overlay):
    pod = resources(overlay)["Deployment"]["spec"]["template"]["spec"]
    c = container(overlay)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts, "the supervisor's run dir (tempfile.mkdtemp) needs a writable /tmp"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]


def test_gpu_overlay_asks_for_a_gpu():
    pod = resources("gpu")["Deployment"]["spec"]["template"]["spec"]
    c = container("gpu")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert resources("gpu")["ConfigMap"]["data"]["FLOWMAP_DEVICE"] == "cuda"
    assert "nvidia.com/gpu" not in str(resources("cpu")["Deployment"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_the_server(overlay):
    """Service -> pods and ServiceMonitor -> Service by labels and port name; pod and namespace labels set."""
    r = resources(overlay)
    pod_labels = r["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc, mon = r["Service"], r["ServiceMonitor"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == container(overlay)["ports"][0]["name"]
    (endpoint,) = mon["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    targets = {x["targetLabel"]: x["sourceLabels"] for x in endpoint["relabelings"]}
    assert targets["pod"] == ["__meta_kubernetes_pod_name"] and targets["namespace"] == [
        "__meta_kubernetes_namespace"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_and_pdb_target_the_deployment(overlay):
    r = resources(overlay)
    hpa, pdb, dep = r["HorizontalPodAutoscaler"], r["PodDisruptionBudget"], r["Deployment"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "flowmap"}
    assert dep["metadata"]["name"] == "flowmap" and "replicas" not in dep["spec"], "the HPA owns replicas"
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    (metric,) = hpa["spec"]["metrics"]
    adapter = load_yaml(DEPLOY / "prometheus-adapter" / "config.yaml")
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] in {rule["name"]["as"] for rule in adapter["rules"]}
