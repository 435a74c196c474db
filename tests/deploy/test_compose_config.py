"""docker-compose.yml through a real Compose implementation: `docker-compose config`
(docker-compose v1, which validates and resolves a file without a Docker engine) in a tools
virtualenv pinned by compose-tools-requirements.txt, built once under .cache/tools-venv-compose
and reused while the pins are unchanged. It must accept the file, resolve what the wiring test
(test_compose.py) reads as YAML the same way (merge keys, variables, profiles), and refuse a
broken copy naming the fault."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests import tool_venv

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
COMPOSE_TOOLS = tool_venv.ToolVenv("compose", "docker-compose", HERE / "compose-tools-requirements.txt",
                                   build_constraints=HERE / "compose-build-constraints.txt")


@pytest.fixture(scope="module")
def docker_compose() -> Path:
    return tool_venv.ensure(COMPOSE_TOOLS) / "bin" / "docker-compose"


def config(docker_compose: Path, compose_file: Path, *extra: str) -> subprocess.CompletedProcess:
    """`docker-compose config` of ``compose_file`` (its directory the project's: relative
    paths resolve there), with every profile, in an environment without our variables."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TFXOPS_")}
    return subprocess.run([str(docker_compose), "--project-directory", str(REPO), "-f", str(compose_file),
                           "--profile", "pipeline", "config", *extra],
                          capture_output=True, text=True, env=environment, timeout=120)


def test_compose_accepts_and_resolves_the_file(docker_compose):
    result = config(docker_compose, REPO / "docker-compose.yml")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    services = resolved["services"]
    assert set(services) == {"verify-models", "serving", "proxy", "pipeline", "monitor", "mysql",
                             "prometheus", "grafana"}
    for name in ("pipeline", "monitor"):        # the merge keys, as Compose resolves them
        environment = services[name]["environment"]
        assert environment["TFXOPS_METADATA_BACKEND"] == "mysql" and environment["TFXOPS_MYSQL_HOST"] == "mysql"
        assert environment["TFXOPS_MYSQL_PASSWORD"] == "tfxops-local"          # the local fallback
        assert services[name]["depends_on"]["mysql"]["condition"] == "service_healthy"
    for name in ("verify-models", "proxy", "pipeline", "monitor"):
        assert services[name]["build"]["context"] == str(REPO) and services[name]["image"] == "tfxops:latest"
        assert services[name]["user"] == "1000:1000"
    assert services["proxy"]["depends_on"]["serving"]["condition"] == "service_healthy"
    for name in ("serving", "proxy", "prometheus", "grafana", "mysql"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(REPO / "deploy" / "prometheus" / "prometheus.yml")
    assert mounts["/prometheus"] == "prometheus-data"
    assert set(resolved["volumes"]) == {"mlmd-mysql", "prometheus-data", "grafana-data"}
    assert sorted(config(docker_compose, REPO / "docker-compose.yml", "--services").stdout.split()) == sorted(services)


@pytest.mark.parametrize("fault, words", [
    (lambda c: c["services"]["monitor"]["depends_on"].update({"mysqld": {"condition": "service_healthy"}}),
     "mysqld"),
    (lambda c: c["services"]["serving"]["healthcheck"].update({"interval": "often"}), "interval"),
    (lambda c: c["services"]["prometheus"].update({"volumes": ["prometheus-metrics:/prometheus"]}),
     "prometheus-metrics"),
])
def test_compose_refuses_a_broken_copy_naming_the_fault(docker_compose, tmp_path, fault, words):
    broken = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    fault(broken)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    result = config(docker_compose, path)
    assert result.returncode != 0 and words in result.stderr, result.stderr
