"""Several models from one TF Serving model config, served by one process, and that
config changed while it serves: by HandleReloadConfigRequest over real gRPC
(tensorflow_serving's stubs) and by re-reading the file
(model_config_file_poll_wait_seconds). A reload TF Serving would refuse is refused
and the old config keeps serving."""
import logging
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from core import audit, request_log
from serving import model_config as mc
from serving.client import serialize_rows
from serving.models import VersionPolicy
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, pushed_model):
    """One server from a model config listing taxi (versions 1 and 2, labelled
    stable and canary) and other (latest of 5); the file is re-read every 0.3 s."""
    tmp = tmp_path_factory.mktemp("model_config")
    for version in (1, 2):
        copy_version(pushed_model, tmp / "taxi", version)
    copy_version(pushed_model, tmp / "other", 5)
    copy_version(pushed_model, tmp / "third", 9)
    path = str(tmp / "models.config")
    mc.write_model_config(path, [
        mc.ServedModel("taxi", str(tmp / "taxi"), VersionPolicy("specific", versions=(1, 2)),
                       {"stable": 1, "canary": 2}),
        mc.ServedModel("other", str(tmp / "other"))])
    settings = serving_settings(tmp, model_config_file=path, model_config_file_poll_wait_seconds=0.3,
                                log_rotate_records=1)
    server = BackgroundServer(settings)
    server.start()
    server.tmp, server.path = tmp, path
    channel = grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}")
    server.predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    server.model_service = model_service_pb2_grpc.ModelServiceStub(channel)
    yield server
    channel.close()
    server.stop()


def predict(server, rows, name, version=None, label=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["examples"].CopyFrom(_examples(rows))
    return server.predictions.Predict(request, timeout=30)


def _examples(rows):
    import tensorflow as tf
    return tf.make_tensor_proto(serialize_rows(rows[:2]), dtype=tf.string)


def answered_version(server, rows, name, **spec):
    return predict(server, rows, name, **spec).model_spec.version.value


def refused(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def status(server, name):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return {s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
            for s in server.model_service.GetModelStatus(request, timeout=10).model_version_status}


def test_two_models_from_one_config_each_with_its_versions_labels_metrics_and_log(two_models, rows):
    server = two_models
    # a call naming no version goes to the stable label's version (core/served.py; TF Serving
    # would answer with the newest, 2: tfxops' one difference, so promote moves default traffic)
    assert answered_version(server, rows, "taxi") == 1
    assert answered_version(server, rows, "taxi", label="stable") == 1
    assert answered_version(server, rows, "taxi", label="canary") == 2
    assert answered_version(server, rows, "other") == 5
    assert status(server, "taxi") == {1: "AVAILABLE", 2: "AVAILABLE"} and status(server, "other") == {5: "AVAILABLE"}
    # TF Serving's words for a model it does not serve, gRPC and REST
    assert refused(lambda: predict(server, rows, "nope")) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    assert refused(lambda: predict(server, rows, "other", version=1)) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(other, 1)")
    rest = f"http://127.0.0.1:{server.ports.rest}"
    got = requests.get(f"{rest}/v1/models/nope", timeout=10)
    assert got.status_code == 404 and got.json() == {"error": "Could not find any versions of model nope"}
    assert requests.get(f"{rest}/v1/models/other/versions/5/metadata", timeout=10).json()["model_spec"] == {
        "name": "other", "version": "5", "signature_name": ""}
    metrics = requests.get(f"{rest}/monitoring/prometheus/metrics", timeout=10).text
    for name in ("taxi", "other"):
        assert f':tensorflow:serving:request_count{{model_name="{name}",status="OK"}}' in metrics
    assert 'request_count{model_name="unknown",status="NOT_FOUND"}' in metrics      # bounded labels
    logged = _logged(server)
    assert {(r.model_name, r.model_version) for r in logged} >= {("taxi", 1), ("taxi", 2), ("other", 5)}


def _logged(server, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        records = list(request_log.read_request_log(request_log.closed_log_files(
            server.server.settings.request_logs_path)))
        if len({r.model_name for r in records}) >= 2 or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_reload_over_grpc_adds_removes_and_relabels_and_is_audited(two_models, rows):
    server = two_models
    tmp = server.tmp
    mc.reload_server(f"127.0.0.1:{server.ports.grpc}", [
        mc.ServedModel("taxi", str(tmp / "taxi"), VersionPolicy("specific", versions=(1, 2)), {"stable": 2}),
        mc.ServedModel("third", str(tmp / "third"))])
    assert answered_version(server, rows, "third") == 9                           # added: loaded
    assert answered_version(server, rows, "taxi", label="stable") == 2           # label moved
    assert refused(lambda: predict(server, rows, "taxi", label="canary")) == (    # label removed
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary")
    assert refused(lambda: predict(server, rows, "other"))[0] == grpc.StatusCode.NOT_FOUND   # removed
    entries = [e for e in audit.entries(audit.audit_file(server.server.settings))
               if e["action"] == audit.SERVED_CONFIG_CHANGED]
    assert "added third; removed other; changed taxi" in entries[-1]["reason"]
    assert entries[-1]["actor"].startswith("grpc:")
    # a model with nothing to load: TF Serving's UNKNOWN "did not become available", the list applied
    with pytest.raises(mc.ModelConfigError) as caught:
        mc.reload_server(f"127.0.0.1:{server.ports.grpc}", [
            mc.ServedModel("taxi", str(tmp / "taxi"), VersionPolicy("specific", versions=(1, 2)), {"stable": 2}),
            mc.ServedModel("third", str(tmp / "third")), mc.ServedModel("ghost", str(tmp / "ghost"))])
    assert caught.value.code == "UNKNOWN" and "1 model(s) did not become available: ghost" in str(caught.value)
    assert sorted(server.server.models.names()) == ["ghost", "taxi", "third"]


def test_a_reload_tf_serving_would_refuse_changes_nothing(two_models, rows):
    server = two_models
    before = sorted(server.server.models.names())
    request = model_management_pb2.ReloadConfigRequest()
    for _ in range(2):
        entry = request.config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = "taxi", str(server.tmp / "taxi"), "tensorflow"
    code, details = refused(lambda: server.model_service.HandleReloadConfigRequest(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Illegal to list model taxi multiple times in config list" in details
    labelled = mc.ServedModel("taxi", str(server.tmp / "taxi"), VersionPolicy("specific", versions=(1,)),
                              {"stable": 2})
    with pytest.raises(mc.ModelConfigError) as caught:
        mc.reload_server(f"127.0.0.1:{server.ports.grpc}", [labelled])
    assert caught.value.code == "FAILED_PRECONDITION" and "label to version 2 of model taxi" in str(caught.value)
    assert sorted(server.server.models.names()) == before
    assert answered_version(server, rows, "taxi", label="stable") == 2 and status(server, "taxi")[1] == "AVAILABLE"


def test_reload_server_names_the_address_when_no_server_answers():
    from core.ports import free_port
    target = f"127.0.0.1:{free_port()}"
    with pytest.raises(mc.ModelConfigError, match=f"no model server answers at {target}"):
        mc.reload_server(target, [mc.ServedModel("taxi", "/srv/taxi")], timeout=2)


def test_the_file_is_re_read_and_a_broken_file_leaves_the_models_served(two_models, rows, caplog):
    server = two_models
    tmp = server.tmp
    mc.write_model_config(server.path, [
        mc.ServedModel("taxi", str(tmp / "taxi"), VersionPolicy("specific", versions=(1, 2)), {"gold": 1}),
        mc.ServedModel("other", str(tmp / "other"))])
    _until(lambda: "other" in server.server.models.by_name and "gold" in server.server.manager.labels)
    assert answered_version(server, rows, "taxi", label="gold") == 1
    assert answered_version(server, rows, "other") == 5
    caplog.set_level(logging.ERROR, logger="tfxops.serving")
    with open(server.path, "w") as broken:
        broken.write('model_config_list { config { name: "taxi" base_path: "relative" model_platform: "tensorflow" } }')
    _until(lambda: any("not applied, the models served stay as they were" in r.getMessage()
                       and server.path in r.getMessage() for r in caplog.records))     # the server read it
    assert sorted(server.server.models.names()) == ["other", "taxi"]
    assert answered_version(server, rows, "taxi", label="gold") == 1


def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the model config file was not re-read"
        time.sleep(0.1)

