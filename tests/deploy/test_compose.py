"""docker-compose.yml's wiring, read as data (no Docker engine here: nothing is built or
started; tests/deploy/test_compose_config.py has a real Compose implementation resolve the
file): which service reads which metadata store, who builds the tfxops image, healthchecks
that ask the right port and path, Prometheus targets and Grafana's datasource that resolve to
services and ports that exist, bind mounts written only as TFXOPS_UID, and a Dockerfile whose
dependency layer does not depend on the code. Each check is also run on a broken copy and
must name the break."""
import copy
import json
import re
from typing import Dict, List

import pytest
import yaml

from core import config
from serving.access import METRICS_PATHS
from tests.code.test_images import DOCKERFILE, ignore_patterns, ignored, instructions
from tests.conftest import REPO

TFXOPS_IMAGE = "tfxops:latest"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def tfxops_command(service: dict) -> List[str]:
    command = service.get("command") or []
    return command[1:] if command[:1] == ["tfxops"] else []


def flag_value(command: List[str], prefix: str) -> str:
    """The value of ``--name=value`` or ``--set setting=value`` in a command."""
    for i, arg in enumerate(command):
        if arg.startswith(prefix):
            return arg[len(prefix):]
        if arg == "--set" and command[i + 1].startswith(prefix):
            return command[i + 1][len(prefix):]
    return ""


def listening_ports(name: str, service: dict) -> Dict[int, List[str]]:
    """{port: [paths it serves]} for the services whose HTTP ports we know: TF Serving (its
    flags, serving/monitoring.config), a tfxops proxy (its --set, METRICS_PATHS), Prometheus."""
    command = [str(a) for a in service.get("command", [])]
    if service["image"].startswith("tensorflow/serving:"):
        metrics = re.search(r'path: "([^"]+)"', (REPO / "serving" / "monitoring.config").read_text()).group(1)
        return {int(flag_value(command, "--rest_api_port=")): ["/v1/models/", metrics],
                int(flag_value(command, "--port=")): []}
    if tfxops_command(service)[:1] == ["serve"]:
        return {int(flag_value(command, "rest_port=")): ["/v1/models/", *METRICS_PATHS],
                int(flag_value(command, "grpc_port=")): []}
    if service["image"].startswith("prom/prometheus:"):
        return {int(flag_value(command, "--web.listen-address=:")): ["/-/ready", "/api/v1/"]}
    if service["image"].startswith("grafana/grafana:"):
        return {3000: ["/api/health"]}
    return {}


# ------------------------------------------------------------------ the metadata store
def metadata_problems(compose: dict) -> List[str]:
    """Every service that runs the pipeline or the monitor reads ML Metadata from the
    mysql service (the x-mlmd-mysql variables, a host and port that service listens on),
    after it is healthy."""
    problems, services = [], compose["services"]
    users = [name for name, s in services.items() if tfxops_command(s)[:1] in (["run"], ["monitor"])]
    if set(users) < {"pipeline", "monitor"}:
        problems.append(f"the pipeline and the monitor must both be services, got {users}")
    for name in users:
        environment = {k: str(v) for k, v in services[name].get("environment", {}).items()}
        settings = config.load({}, environ={k: v for k, v in environment.items() if k.startswith(config.ENV_PREFIX)
                                            and k != "TFXOPS_MODEL_KEY"})
        if settings.metadata_backend != "mysql":
            problems.append(f"{name} reads ML Metadata from {settings.metadata_backend}, not the mysql service")
            continue
        if not dict(compose["x-mlmd-mysql"]).items() <= environment.items():
            problems.append(f"{name} does not take every x-mlmd-mysql variable")
        host = services.get(settings.mysql_host)
        if host is None or not host["image"].startswith("mariadb:") or \
                f"127.0.0.1:{settings.mysql_port}:3306" not in host.get("ports", []):
            problems.append(f"{name} reads MLMD at {settings.mysql_host}:{settings.mysql_port}, not a MariaDB service")
        elif services[name].get("depends_on", {}).get(settings.mysql_host) != {"condition": "service_healthy"}:
            problems.append(f"{name} does not wait for {settings.mysql_host} to be healthy")
    return problems


def test_the_pipeline_and_the_monitor_share_mlmd_in_mysql(compose):
    assert metadata_problems(compose) == []
    assert compose["services"]["mysql"]["healthcheck"]["test"][:2] == ["CMD", "healthcheck.sh"]
    assert compose["services"]["pipeline"]["profiles"] == ["pipeline"]     # `up` does not retrain
    broken = copy.deepcopy(compose)
    del broken["services"]["monitor"]["environment"]["TFXOPS_METADATA_BACKEND"]
    assert metadata_problems(broken) == ["monitor reads ML Metadata from sqlite, not the mysql service"]
    broken = copy.deepcopy(compose)
    broken["services"]["pipeline"]["environment"]["TFXOPS_MYSQL_HOST"] = "db"
    assert metadata_problems(broken) == ["pipeline does not take every x-mlmd-mysql variable",
                                         "pipeline reads MLMD at db:3306, not a MariaDB service"]


# ------------------------------------------------------------------ images
def image_problems(compose: dict) -> List[str]:
    """Each service's image can be pulled (a registry image with a tag) or is built here
    from the project's Dockerfile (the tfxops image): `docker compose pull` and `up --build` work."""
    problems = []
    for name, service in compose["services"].items():
        if service["image"] == TFXOPS_IMAGE:
            build = service.get("build") or {}
            if (REPO / build.get("context", "/nowhere") / build.get("dockerfile", "Dockerfile")).resolve() != DOCKERFILE:
                problems.append(f"{name} runs {TFXOPS_IMAGE} without building it from the Dockerfile")
            if service.get("entrypoint") != [] or not tfxops_command(service):
                problems.append(f"{name} does not run a tfxops command (Beam's boot is the image's entrypoint)")
        elif "build" in service:
            problems.append(f"{name} builds another image")
    return problems


def test_every_tfxops_service_builds_the_project_image(compose):
    assert image_problems(compose) == []
    assert {n for n, s in compose["services"].items() if s["image"] == TFXOPS_IMAGE} == {
        "verify-models", "proxy", "pipeline", "monitor"}
    broken = copy.deepcopy(compose)
    del broken["services"]["monitor"]["build"]
    assert image_problems(broken) == [f"monitor runs {TFXOPS_IMAGE} without building it from the Dockerfile"]


# ------------------------------------------------------------------ healthchecks
def health_problems(compose: dict) -> List[str]:
    """serving and proxy have healthchecks that ask a port the service listens on, for a
    path it serves (TF Serving: the model's REST status, AVAILABLE); every `service_healthy`
    condition waits for a service that has a healthcheck."""
    problems, services = [], compose["services"]
    settings = config.load({}, environ={})
    for name in ("serving", "proxy", "prometheus", "grafana"):
        test = " ".join(services[name].get("healthcheck", {}).get("test", []))
        ports = listening_ports(name, services[name])
        asked = re.search(r"(?:127\.0\.0\.1|localhost)[:/](\d+)", test)
        if not asked or int(asked.group(1)) not in ports:
            problems.append(f"{name}'s healthcheck asks no port it listens on")
        elif not any(path in test for path in ports[int(asked.group(1))]):
            problems.append(f"{name}'s healthcheck asks for no path it serves")
    serving_test = " ".join(services["serving"].get("healthcheck", {}).get("test", []))
    if f"/v1/models/{settings.model_name}" not in serving_test or "AVAILABLE" not in serving_test:
        problems.append(f"serving's healthcheck does not ask whether {settings.model_name} is AVAILABLE")
    for name, service in services.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            if condition == {"condition": "service_healthy"} and "healthcheck" not in services[needed]:
                problems.append(f"{name} waits for {needed} to be healthy: it has no healthcheck")
    return problems


def test_serving_and_proxy_have_healthchecks_on_their_own_ports(compose):
    assert health_problems(compose) == []
    assert compose["services"]["proxy"]["depends_on"]["serving"] == {"condition": "service_healthy"}
    broken = copy.deepcopy(compose)
    broken["services"]["proxy"]["healthcheck"]["test"][-1] = broken["services"]["proxy"]["healthcheck"]["test"][
        -1].replace("8501", "8601")
    assert health_problems(broken) == ["proxy's healthcheck asks no port it listens on"]
    broken = copy.deepcopy(compose)
    del broken["services"]["serving"]["healthcheck"]
    assert "proxy waits for serving to be healthy: it has no healthcheck" in health_problems(broken)


# ------------------------------------------------------------------ Prometheus and Grafana
def scrape_problems(compose: dict, prometheus: dict) -> List[str]:
    """Each scrape target is a compose service listening on that port and serving that path."""
    problems = []
    for job in prometheus["scrape_configs"]:
        for target in (t for group in job["static_configs"] for t in group["targets"]):
            host, port = target.rsplit(":", 1)
            service = compose["services"].get(host)
            paths = listening_ports(host, service).get(int(port)) if service else None
            if paths is None:
                problems.append(f"{job['job_name']}: {target} is no service listening on that port")
            elif job.get("metrics_path", "/metrics") not in paths:
                problems.append(f"{job['job_name']}: {host}:{port} serves no {job.get('metrics_path', '/metrics')}")
    return problems


def test_prometheus_scrapes_the_proxy_and_tf_serving(compose):
    prometheus = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert scrape_problems(compose, prometheus) == []
    assert {job["job_name"] for job in prometheus["scrape_configs"]} == {"tfxops-proxy", "tf-serving"}
    service = compose["services"]["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in service["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    broken = copy.deepcopy(prometheus)
    broken["scrape_configs"][0]["static_configs"][0]["targets"] = ["proxy:9999"]
    broken["scrape_configs"][1]["metrics_path"] = "/metrics"
    assert scrape_problems(compose, broken) == ["tfxops-proxy: proxy:9999 is no service listening on that port",
                                                "tf-serving: serving:8501 serves no /metrics"]


def test_grafana_is_provisioned_with_prometheus_and_the_serving_dashboard(compose):
    from serving import metrics

    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    [source] = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"]).groups()
    assert int(port) in listening_ports(host, compose["services"][host])      # the compose Prometheus
    [provider] = yaml.safe_load((GRAFANA / "provisioning/dashboards/tfxops.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    dashboard = json.loads((GRAFANA / "dashboards/tfxops-serving.json").read_text())
    targets = [t for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert targets and {t["datasource"]["uid"] for t in targets} == {source["uid"]}
    named = {value for name, value in vars(metrics).items() if name.isupper() and isinstance(value, str)}
    for target in targets:       # every series named is one the proxy or TF Serving exposes
        series = set(re.findall(r'__name__="([^"]+)"', target["expr"])) | set(
            re.findall(r"\b(tfxops_[a-z_]+)", target["expr"]))
        assert series and {re.sub(r"_bucket$", "", s) for s in series} <= named, target["expr"]
        assert set(re.findall(r'job="([^"]+)"', target["expr"])) <= {
            j["job_name"] for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    text = " ".join(p.get("options", {}).get("content", "") for p in dashboard["panels"])
    assert "not Prometheus metrics" in text          # drift: where it is instead


# ------------------------------------------------------------------ users and bind mounts
def mount_problems(compose: dict) -> List[str]:
    """A service that writes into a host directory (a bind mount without :ro) runs as
    TFXOPS_UID:TFXOPS_GID, so what it leaves there belongs to that user, never root."""
    problems = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, _, *mode = volume.split(":")
            if source.startswith(("./", "/")) and mode != ["ro"] and \
                    service.get("user") != "${TFXOPS_UID:-1000}:${TFXOPS_GID:-1000}":
                problems.append(f"{name} writes {source} as {service.get('user', 'root')}")
    return problems


def test_host_directories_are_written_only_as_tfxops_uid(compose):
    assert mount_problems(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["prometheus"]["volumes"].append("./outputs/prometheus:/prometheus")
    assert mount_problems(broken) == ["prometheus writes ./outputs/prometheus as 65534:65534"]


# ------------------------------------------------------------------ the Dockerfile
def test_dependencies_install_before_the_code_is_copied():
    """A code change reruns only the project's editable install: the hashed dependency
    install (issue 16) comes from the lock files alone, copied before the code. Every
    COPY source exists and .dockerignore keeps it in the build context."""
    steps = instructions(DOCKERFILE.read_text())
    copies = [i for i, (keyword, _) in enumerate(steps) if keyword == "COPY"]
    code = next(i for i in copies if steps[i][1].split()[0] == ".")
    dependencies = next(i for i, (keyword, rest) in enumerate(steps) if keyword == "RUN" and "-r constraints.txt" in rest)
    assert dependencies < code
    assert all("--require-hashes" in rest for keyword, rest in steps[:code] if keyword == "RUN" and " -r " in rest)
    for keyword, rest in steps[code + 1:]:
        assert keyword != "RUN" or ("-e ." in rest and "-r " not in rest and "useradd" not in rest), rest
    patterns = ignore_patterns()
    for i in copies:
        *sources, _ = steps[i][1].split()
        for source in sources:
            assert (REPO / source).exists() and (source == "." or not ignored(source, patterns)), source
    for path in (".venv/lib/x", "outputs/metadata.sqlite", ".git/HEAD", ".cache/x", "tests/conftest.py",
                 "core/__pycache__/env.cpython-310.pyc", "mlruns/0/meta.yaml", ".mypy_cache/x"):
        assert ignored(path, patterns), path
