"""Serving fixtures: a push directory holding a copy of the pipeline's pushed model,
and real servers on free 127.0.0.1 ports."""
import shutil

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.server import BackgroundServer, free_port
from tfxops import config
from tfxops.examples import read_csv_rows


def copy_version(src, push_dir, version):
    push_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, push_dir / str(version))
    return version


def serving_settings(tmp, **overrides):
    values = {"home": str(tmp), "serving_dir": str(tmp / "serving_model"),
              "rest_port": str(free_port()), "grpc_port": str(free_port()),
              "poll_seconds": "0.2", "request_log_dir": str(tmp / "request_logs")}
    values.update({k: str(v) for k, v in overrides.items()})
    return config.load(values)


@pytest.fixture(scope="session")
def pushed_model(first_run):
    assert first_run.pushed_path, "the pipeline's first run pushed no model"
    return first_run.pushed_path


@pytest.fixture(scope="session")
def rows(e2e_settings):
    from pathlib import Path
    return list(read_csv_rows(str(Path(e2e_settings.data_dir) / "data.csv")))[:50]


@pytest.fixture(scope="module")
def served(tmp_path_factory, pushed_model):
    """One server (batching and logging on) for the conformance tests of a module."""
    tmp = tmp_path_factory.mktemp("served")
    settings = serving_settings(tmp, log_rotate_records=5)
    copy_version(pushed_model, settings.model_push_dir, 7)
    server = BackgroundServer(settings)
    server.start()
    server.settings = settings
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(served):
    """A gRPC channel to the module's ``served`` server."""
    ch = grpc.insecure_channel(f"127.0.0.1:{served.ports.grpc}")
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)
