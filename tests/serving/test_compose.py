"""docker-compose.yml agrees with core.config's defaults and runs tfxops on the
project's image (no Docker engine needed)."""
import re

import yaml

from tests.conftest import REPO
from core import config


def test_compose_matches_settings():
    s = config.load({}, environ={})
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    serving, proxy = compose["services"]["serving"], compose["services"]["proxy"]
    assert serving["image"].startswith("tensorflow/serving:2.16.")
    args = " ".join(serving["command"])
    assert f"--port={s.grpc_port}" in args and f"--rest_api_port={s.rest_port}" in args
    assert "--enable_batching" in args and "--batching_parameters_file=" in args
    assert "--monitoring_config_file=" in args and "--model_config_file=" in args
    # the push directory is the model base path
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in serving["volumes"])
    push = "./" + str(s.model_push_dir)
    assert mounts[push] == f"/models/{s.model_name}"
    models_config = (REPO / "serving" / "models.config").read_text()
    assert f'name: "{s.model_name}"' in models_config
    assert f'base_path: "/models/{s.model_name}"' in models_config
    for host_path, _ in mounts.items():
        if host_path.startswith("./serving/"):
            assert (REPO / host_path).is_file(), host_path
    batching = (REPO / "serving" / "batching.config").read_text()
    assert re.search(rf"max_batch_size {{ value: {s.max_batch_size} }}", batching)
    timeout = int(re.search(r"batch_timeout_micros \{ value: (\d+) \}", batching).group(1))
    assert 0 < timeout <= s.batch_timeout_micros   # TF Serving always waits it: kept short
    assert "/monitoring/prometheus/metrics" in (REPO / "serving" / "monitoring.config").read_text()
    # clients talk to the logging proxy on both ports; it forwards to serving's
    assert f"127.0.0.1:{s.rest_port}:{s.rest_port}" in proxy["ports"]
    assert f"127.0.0.1:{s.grpc_port}:{s.grpc_port}" in proxy["ports"]
    command = proxy["command"]
    assert command[command.index("--proxy-to") + 1] == f"serving:{s.rest_port}"
    assert command[command.index("--proxy-grpc-to") + 1] == f"serving:{s.grpc_port}"
    assert f"rest_port={s.rest_port}" in command and f"grpc_port={s.grpc_port}" in command
    assert "ports" not in serving      # TF Serving is reached through the proxy only
    assert {str(s.rest_port), str(s.grpc_port)} <= {str(p) for p in serving["expose"]}


def test_compose_runs_the_tfxops_services_on_the_project_image():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    settings = config.load({}, environ={})
    proxy, monitor = compose["services"]["proxy"], compose["services"]["monitor"]
    assert (REPO / proxy["build"]["context"] / proxy["build"]["dockerfile"]).resolve() == REPO / "Dockerfile"
    for service in (proxy, monitor):
        assert service["image"] == settings.beam_worker_image
        assert service["entrypoint"] == []                      # not Beam's worker boot
        assert service["command"][0] == "tfxops"
    assert not (REPO / "serving" / "Dockerfile").exists()       # one image
