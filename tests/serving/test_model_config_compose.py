"""One config drives both: docker-compose.yml's TF Serving service (its command and
volumes, read from the file) runs as ``tfxops serve`` with exactly those flags and
the very same serving/*.config files (no copies), and serves what the files say.

The container paths in those flags and files (/config/models.config, /models/taxi)
are read through ``container_volumes`` set to the service's own volumes, whose
relative host sides resolve against the working directory as compose resolves them
against the compose file's directory: the server runs in a scratch directory laid
out as the project (./serving links to the repository's serving/, ./outputs/serving_model/taxi
holds two pushed versions)."""
import os
import re
import subprocess
import sys

import grpc
import pytest
import requests
import yaml
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from core.ports import free_port
from serving import client
from serving import model_config as mc
from tests.conftest import REPO
from tests.serving.conftest import copy_version


def compose_serving():
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["serving"]
    return list(service["command"]), list(service["volumes"])


def flag(command, name):
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    return value


@pytest.fixture(scope="module")
def compose_served(tmp_path_factory, pushed_model):
    root = tmp_path_factory.mktemp("compose_root")
    (root / "serving").symlink_to(REPO / "serving")           # the repository's files themselves
    for version in (3, 4):
        copy_version(pushed_model, root / "outputs" / "serving_model" / "taxi", version)
    command, volumes = compose_serving()
    ports = {"port": free_port(), "rest_api_port": free_port()}
    args = [re.sub(r"^--(port|rest_api_port)=\d+$", lambda m: f"--{m.group(1)}={ports[m.group(1)]}", arg)
            for arg in command]
    serve = [sys.executable, "-m", "tfxops.cli", "serve", "--home", str(root / "home"), *args,
             "--set", "container_volumes=" + ",".join(volumes), "--set", f"request_log_dir={root / 'logs'}"]
    log_path = root / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(serve, cwd=str(root), stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        client.wait_listening(ports["rest_api_port"], proc)
        client.wait_listening(ports["port"], proc)
    except RuntimeError as exc:
        proc.kill()
        raise AssertionError(f"{exc}:\n{log_path.read_text()}") from None
    yield ports, command, volumes, log_path, root
    proc.terminate()
    proc.wait(60)


def test_compose_flags_and_files_drive_tfxops_serve(compose_served):
    ports, command, volumes, log_path, root = compose_served
    models_config = flag(command, "model_config_file")
    assert models_config.startswith("/config/")                 # a container path, read through the volume
    expected = mc.read_model_config(mc.host_path(models_config, volumes))
    batching = mc.read_batching_parameters(mc.host_path(flag(command, "batching_parameters_file"), volumes))
    monitoring = mc.read_monitoring_config(mc.host_path(flag(command, "monitoring_config_file"), volumes))
    assert os.path.samefile(mc.host_path(models_config, volumes), REPO / "serving" / "models.config")
    # the models and versions the file names, with its policy (latest of 3 and 4) and labels
    channel = grpc.insecure_channel(f"127.0.0.1:{ports['port']}")
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    for model in expected:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model.name
        served = models.GetModelStatus(request, timeout=10).model_version_status
        assert model.policy.select([3, 4]) == [4]
        assert {s.version: s.state for s in served} == {4: get_model_status_pb2.ModelVersionStatus.AVAILABLE}
    channel.close()
    log = log_path.read_text()
    for model in expected:
        assert f"model {model.name}: base path {root}/outputs/serving_model/{model.name}," in log
        assert f"policy {model.policy}, labels {model.labels or 'none'}" in log
    # the batching file's parameters (max_enqueued_batches bounds the requests in flight)
    assert (f"batching: max_batch_size={batching.max_batch_size} batch_timeout_micros={batching.batch_timeout_micros} "
            f"num_batch_threads={batching.num_batch_threads} "
            f"max_concurrent_requests={batching.max_enqueued_batches * batching.max_batch_size}") in log
    # the metrics where the monitoring file puts them
    assert monitoring.enabled
    page = requests.get(f"http://127.0.0.1:{ports['rest_api_port']}{monitoring.path}", timeout=10)
    assert page.status_code == 200 and 'model_versions_available{model_name="taxi"} 1' in page.text
    rest = requests.get(f"http://127.0.0.1:{ports['rest_api_port']}/v1/models/taxi", timeout=10).json()
    assert rest["model_version_status"][0]["version"] == "4"
