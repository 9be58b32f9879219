"""docker/: images, compose, Prometheus, Grafana and Kubernetes manifests, checked without a Docker engine."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from service.app import create_app
from service.settings import Settings

from .conftest import ROOT
from .images import face_bytes

DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
CRD_KINDS = {"ServiceMonitor", "InferenceService", "ServingRuntime"}
KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")


def tool(name: str) -> str:
    """A command installed in the virtual environment beside this Python, or on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kserve_container() -> dict:
    """The predictor's container, described by the ServingRuntime the InferenceService selects."""
    return by_kind(documents(K8S / "kserve" / "inferenceservice.yaml"), "ServingRuntime")["spec"]["containers"][0]


def rendered(overlay: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> dict:
    return next(doc for doc in docs if doc["kind"] == kind)


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV lines of the final stage (the runtime image)."""
    final = path.read_text().split("\nFROM ")[-1].replace("\\\n", " ")
    env = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def dockerfile_cmd(path: Path) -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", path.read_text(), re.MULTILINE)[1])


def settings_fields() -> set[str]:
    return {f"FER_{name.upper()}" for name in Settings.model_fields}


def route_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


# --- linters and schemas ---------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_run_as_non_root_with_healthcheck_and_stop_signal():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        final = text.split("\nFROM ")[-1]
        assert text.count("\nFROM ") >= 1, "multi-stage"
        assert re.search(r"^USER 10001$", final, re.MULTILINE)
        assert "HEALTHCHECK" in final and "/healthz" in final and "STOPSIGNAL SIGTERM" in final
        assert not re.search(r"(gcc|build-essential|pytest)", final)


def test_yaml_is_lint_clean():
    config = YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    files = [p for p in DOCKER.rglob("*") if p.suffix in (".yaml", ".yml")]
    problems = [f"{path}:{problem.line}: {problem.message}" for path in files
                for problem in linter.run(path.read_text(), config)]
    assert len(files) >= 12 and not problems, problems


@pytest.mark.skipif(not KUBECTL, reason="kubectl (for `kubectl kustomize`) is not installed")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_render_and_validate_against_kubernetes_schemas(overlay):
    docs = rendered(overlay)
    assert {doc["kind"] for doc in docs} == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                                             "PodDisruptionBudget", "ServiceMonitor"}
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
    container = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"fer-explain:{overlay}"
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (overlay == "gpu")


@pytest.mark.skipif(not KUBECTL, reason="kubectl (for `kubectl kustomize`) is not installed")
def test_api_keys_overlay_mounts_the_secret_as_the_keys_file():
    docs = rendered("cpu-api-keys")
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    keys_file = next(item["value"] for item in container["env"] if item["name"] == "FER_API_KEYS_FILE")
    assert "FER_API_KEYS_FILE" in settings_fields()
    mount = next(m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] and volume["secret"]["secretName"] == "fer-explain-api-keys"
    assert "Secret" not in {doc["kind"] for doc in docs}, "keys stay out of git: the Secret is created apart"


def test_base_and_kserve_manifests_validate():
    for path in (K8S / "base").glob("*.yaml"):
        for doc in documents(path):
            if doc["kind"] not in CRD_KINDS and doc["kind"] != "Kustomization":
                kubernetes_validate.validate(doc, "1.37.0", strict=True)
    service, runtime = documents(K8S / "kserve" / "inferenceservice.yaml")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert runtime["kind"] == "ServingRuntime" and "v2" in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-predictor"},
           "spec": {"containers": runtime["spec"]["containers"]}}
    kubernetes_validate.validate(pod, "1.37.0", strict=True)  # the predictor's containers are core Containers


def test_deployment_is_hardened_and_drains():
    deployment = by_kind(documents(K8S / "base" / "deployment.yaml"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful = float(documents(K8S / "base" / "configmap.yaml")[0]["data"]["FER_GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain + graceful
    hpa = by_kind(documents(K8S / "base" / "hpa.yaml"), "HorizontalPodAutoscaler")
    metric_names = [m.get("pods", {}).get("metric", {}).get("name") for m in hpa["spec"]["metrics"]]
    assert "fer_queue_depth" in metric_names and any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])


# --- consistency with the code ------------------------------------------------------------------------

def deployment_env_names() -> dict[str, set[str]]:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gpu_literals = documents(K8S / "overlays" / "gpu" / "kustomization.yaml")[0]["configMapGenerator"][0]["literals"]
    kserve = kserve_container()["env"]
    sources = {
        "configmap": set(documents(K8S / "base" / "configmap.yaml")[0]["data"]),
        "gpu overlay": {literal.split("=")[0] for literal in gpu_literals},
        "kserve": {item["name"] for item in kserve},
        **{f"compose {name}": set(service["environment"]) for name, service in compose["services"].items()
           if service.get("image", "").startswith("fer-explain")},
        **{path.name: set(dockerfile_env(path)) for path in DOCKERFILES},
    }
    return {source: {name for name in names if name.startswith("FER_")} for source, names in sources.items()}


def test_every_setting_named_in_manifests_exists_in_the_service():
    known = settings_fields()
    for source, names in deployment_env_names().items():
        assert names, f"{source} sets no FER_ variable"
        assert names <= known, f"{source} sets {names - known}, unknown to service/settings.py"


def test_probe_paths_metrics_path_and_ports_match_the_service():
    routes = route_paths()
    port = Settings().port
    deployment = by_kind(documents(K8S / "base" / "deployment.yaml"), "Deployment")
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    assert container["ports"][0]["containerPort"] == port
    assert int(documents(K8S / "base" / "configmap.yaml")[0]["data"]["FER_PORT"]) == port
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert template["metadata"]["annotations"]["prometheus.io/path"] in routes
    monitor = documents(K8S / "base" / "servicemonitor.yaml")[0]
    service = documents(K8S / "base" / "service.yaml")[0]
    assert monitor["spec"]["endpoints"][0]["path"] in routes
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == container["ports"][0]["name"]
    kserve = kserve_container()
    assert kserve["ports"][0]["containerPort"] == port
    probes = {kserve["readinessProbe"]["httpGet"]["path"], kserve["livenessProbe"]["httpGet"]["path"]}
    assert probes == {"/v2/health/ready", "/v2/health/live"} and probes <= routes  # the protocol's health paths
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] in routes and all(t.endswith(f":{port}") for t in job["static_configs"][0]["targets"])
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["services"]["fer"]["ports"][0].endswith(f":{port}")
    for dockerfile in DOCKERFILES:
        assert f"EXPOSE {port}" in dockerfile.read_text() and int(dockerfile_env(dockerfile)["FER_PORT"]) == port
        assert re.search(r"/healthz", dockerfile.read_text()) and "/healthz" in routes


def test_grafana_dashboard_queries_metrics_the_service_exports(client):
    types = re.findall(r"^# TYPE (\w+) (\w+)$", client.get("/metrics").text, re.MULTILINE)
    exported = {name + suffix for name, kind in types
                for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))}
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "fer-explain.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(fer_[a-z_]+)", target["expr"])}
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("request rate", "latency", "batch size", "queue depth", "errors", "gpu memory"):
        assert topic in titles
    missing = queried - exported
    assert not missing, f"the dashboard queries metrics the service does not export: {missing}"


@pytest.mark.skipif(not PROMTOOL, reason="promtool is not installed (Debian package prometheus; .ci/run installs it)")
def test_promtool_accepts_the_config_and_the_metrics(client):
    config = subprocess.run([PROMTOOL, "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
    client.post("/predict", files=[("files", ("a.png", face_bytes(), "image/png"))])
    metrics = subprocess.run([PROMTOOL, "check", "metrics"], input=client.get("/metrics").text, capture_output=True,
                             text=True)
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr


# --- the image's command, run here --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_image_command_serves_passes_readiness_and_drains_on_sigterm(model_dir, tmp_path):
    dockerfile = DOCKER / "Dockerfile.cpu"
    configmap = documents(K8S / "base" / "configmap.yaml")[0]["data"]
    port = free_port()
    env = {**os.environ, **dockerfile_env(dockerfile), **configmap, "PATH": os.environ["PATH"],
           "FER_MODEL_DIR": str(model_dir), "FER_PORT": str(port), "FER_HOST": "127.0.0.1",
           "MPLCONFIGDIR": str(tmp_path)}
    command = dockerfile_cmd(dockerfile)
    assert command[0] == "python"
    readiness = by_kind(documents(K8S / "base" / "deployment.yaml"), "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    server = subprocess.Popen([sys.executable, *command[1:]], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(base + readiness, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready within 120 s"
            time.sleep(0.3)

        files = [("files", (f"{i}.png", face_bytes(seed=i), "image/png")) for i in range(32)]

        def predict(_):  # accepted predictions finish
            return httpx.post(f"{base}/predict?faces=none", files=files, timeout=60).status_code

        def explain(_):  # explanation work is cancelled at SIGTERM: 503, never a 5xx of another kind
            return httpx.post(f"{base}/saliency?method=smoothgrad&format=json&faces=none", files=files[:16],
                              timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            predictions = [pool.submit(predict, i) for i in range(4)]
            explanations = [pool.submit(explain, i) for i in range(3)]
            time.sleep(1.0)
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            statuses = [future.result() for future in predictions]
            explained = [future.result() for future in explanations]
        assert statuses == [200] * 4
        assert set(explained) <= {200, 503}, explained
        assert server.wait(60) == 0
        assert time.monotonic() - signalled < 30  # within the grace period, whatever the backlog
        with pytest.raises(httpx.HTTPError):
            httpx.get(base + "/healthz", timeout=1)
    finally:
        if server.poll() is None:
            server.kill()


def test_manifests_run_the_image_as_the_smoke_test_ran_it():
    """docker/smoke.sh runs the image as uid 10001 on a read-only root with only /tmp writable, waits the
    HEALTHCHECK's start period for /readyz and wants `stop` to finish within its grace: the Dockerfiles and the
    Deployment must ask for the same, or what the smoke test saw says nothing about the cluster."""
    smoke = (DOCKER / "smoke.sh").read_text()
    grace = int(re.search(r"^GRACE=(\d+)", smoke, re.MULTILINE).group(1))
    start_period = int(re.search(r"^START_PERIOD=(\d+)", smoke, re.MULTILINE).group(1))
    assert "--read-only --tmpfs /tmp" in smoke and "id -u" in smoke and "10001" in smoke
    assert f"--start-period={start_period}s" in (DOCKER / "Dockerfile.cpu").read_text()  # the image it runs
    deployment = by_kind(documents(K8S / "base" / "deployment.yaml"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsUser"] == 10001 and container["securityContext"]["readOnlyRootFilesystem"]
    writable = {mount["mountPath"] for mount in container["volumeMounts"]
                if not mount.get("readOnly") and any(v["name"] == mount["name"] and "emptyDir" in v
                                                     for v in pod["volumes"])}
    assert writable == {"/tmp"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= start_period
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= drain + grace
