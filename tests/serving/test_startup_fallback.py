"""A broken newest version falls back to the newest loadable one in the same
scan: at start-up the server listens with that version loaded (the first request
is answered, not a 404 until the next poll), and a poll that finds a good and a
broken new version serves the good one at once."""
import base64

import requests

from serving.client import GrpcClient, predict_request, serialize_rows
from serving.models import AVAILABLE, END, ModelManager, VersionPolicy
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings

NO_SECOND_POLL = 3600     # poll_seconds: every assertion is about the first scan


def _broken_copy(pushed_model, push_dir, version):
    """A version whose saved_model.pb is cut short (a push gone wrong)."""
    copy_version(pushed_model, push_dir, version)
    pb = push_dir / str(version) / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:200])


def test_broken_newest_version_at_start_serves_the_older_from_the_first_request(
        tmp_path, pushed_model, rows):
    settings = serving_settings(tmp_path, poll_seconds=NO_SECOND_POLL)
    copy_version(pushed_model, settings.model_push_dir, 1)
    _broken_copy(pushed_model, settings.model_push_dir, 2)
    with BackgroundServer(settings) as server:
        base = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi"
        first = requests.post(base + ":predict", timeout=30, json={"instances": [
            {"b64": base64.b64encode(serialize_rows(rows[:1])[0]).decode()}]})
        assert first.status_code == 200, first.text
        grpc_client = GrpcClient("127.0.0.1", server.ports.grpc, "taxi")
        answer = grpc_client.stub.Predict(predict_request("taxi", serialize_rows(rows[:1])),
                                          timeout=30)
        grpc_client.close()
        assert answer.model_spec.version.value == 1
        status = {s["version"]: s for s in requests.get(base, timeout=30).json()[
            "model_version_status"]}
    assert status["1"]["state"] == AVAILABLE
    assert status["2"]["state"] == END and status["2"]["status"]["error_code"] != "OK"
    assert status["2"]["status"]["error_message"]


def test_good_and_broken_new_versions_in_one_scan_serve_the_good_one(tmp_path, pushed_model):
    push_dir = tmp_path / "taxi"
    copy_version(pushed_model, push_dir, 1)
    manager = ModelManager("taxi", str(push_dir), VersionPolicy.parse("latest"),
                           poll_seconds=NO_SECOND_POLL)
    manager.start()
    try:
        assert manager.available_versions() == [1]
        copy_version(pushed_model, push_dir, 2)
        _broken_copy(pushed_model, push_dir, 3)
        manager.poll_once()
        assert manager.available_versions() == [2]
        states = {s.version: s.state for s in manager.status("taxi")}
        assert states == {3: END, 2: AVAILABLE, 1: END}
        assert manager.status("taxi", 3)[0].error_code != "OK"
    finally:
        manager.stop()
