"""Hot reload under load, corrupt versions, version policy and labels."""
import shutil
import threading
import time

import pytest
import requests

from core.pushdir import publish_atomically
from serving.client import GrpcClient, RestClient, serialize_rows
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings

WAIT = 120  # seconds: an upper bound for waits, never an assertion on time


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(server):
    r = requests.get(f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi", timeout=30)
    return {int(v["version"]): v for v in r.json()["model_version_status"]}


def test_hot_reload_under_load_and_corrupt_version(tmp_path, pushed_model, rows):
    # integrity checks off: this is TensorFlow's own failure on a torn graph (with the
    # check on, the version's manifest refuses it first: tests/security/test_integrity.py)
    settings = serving_settings(tmp_path, model_integrity="off")
    push_dir = settings.model_push_dir
    copy_version(pushed_model, push_dir, 1)
    serialized = serialize_rows(rows[:1])
    with BackgroundServer(settings) as server:
        failures, versions, stop = [], [], threading.Event()

        def client_loop(make):
            c = make()
            try:
                for _ in range(20000):     # bounded in count...
                    if stop.is_set():
                        break
                    try:
                        c.predict_serialized(serialized)
                        versions.append(int(statuses_latest(server)))
                    except Exception as exc:   # noqa: BLE001 - counted, asserted below
                        failures.append(repr(exc))
            finally:
                c.close()

        def statuses_latest(srv):
            return srv.server.manager.available_versions()[-1]

        threads = [threading.Thread(target=client_loop, args=(
            lambda: RestClient("127.0.0.1", server.ports.rest, "taxi"),)),
            threading.Thread(target=client_loop, args=(
                lambda: GrpcClient("127.0.0.1", server.ports.grpc, "taxi"),))]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(versions) > 20, "first answers")
            new = int(publish_atomically(pushed_model, str(push_dir)))
            wait_for(lambda: statuses(server).get(new, {}).get("state") == "AVAILABLE",
                     "the new version")
            wait_for(lambda: statuses(server)[1]["state"] == "END", "the old version unloaded")
            # answers now come from the new version
            requests.post(f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi:predict",
                          json={"instances": [{"b64": ""}]}, timeout=30)
            gc = GrpcClient("127.0.0.1", server.ports.grpc, "taxi")
            from serving.client import predict_request
            resp = gc.stub.Predict(predict_request("taxi", serialized), timeout=30)
            gc.close()
            assert resp.model_spec.version.value == new

            # A corrupt (half-written) newer version: reported, previous keeps serving.
            bad = push_dir / str(new + 1)
            bad.mkdir()
            (bad / "saved_model.pb").write_bytes(b"not a SavedModel")
            wait_for(lambda: statuses(server).get(new + 1, {}).get("state") == "END",
                     "the corrupt version's failure")
            st = statuses(server)
            # TensorFlow's words for a torn saved_model.pb, not Python's DecodeError text
            assert st[new + 1]["status"]["error_code"] == "DATA_LOSS"
            assert st[new + 1]["status"]["error_message"] == \
                f"Can't parse {bad / 'saved_model.pb'} as binary proto"
            assert st[new]["state"] == "AVAILABLE"
            n = len(versions)
            wait_for(lambda: len(versions) > n + 20, "answers after the corrupt push")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert failures == []
        assert server.server.manager.available_versions() == [new]
        # Fixing the corrupt directory in place gets it loaded (its contents changed).
        shutil.rmtree(bad)
        shutil.copytree(pushed_model, bad)
        wait_for(lambda: statuses(server).get(new + 1, {}).get("state") == "AVAILABLE",
                 "the repaired version")


def test_policy_specific_and_labels(tmp_path, pushed_model, rows):
    settings = serving_settings(tmp_path, model_version_policy="specific:1,2",
                                version_labels="stable=1,canary=2", enable_batching="false",
                                log_sample_rate="0")
    for v in (1, 2, 3):
        copy_version(pushed_model, settings.model_push_dir, v)
    with BackgroundServer(settings) as server:
        assert server.server.manager.available_versions() == [1, 2]
        base = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi"
        body = {"instances": [{"b64": ""}]}
        import base64
        body = {"instances": [{"b64": base64.b64encode(s).decode()} for s in serialize_rows(rows[:1])]}
        assert requests.post(base + "/labels/stable:predict", json=body, timeout=30).status_code == 200
        assert requests.post(base + "/labels/canary:predict", json=body, timeout=30).status_code == 200
        r = requests.post(base + "/versions/3:predict", json=body, timeout=30)
        assert r.status_code == 404
        assert requests.get(base + "/labels/canary", timeout=30).json()["model_version_status"][0]["version"] == "2"


def test_bad_policy_is_refused():
    from core.served import parse_labels
    from serving.models import VersionPolicy
    assert VersionPolicy.parse("latest:3").select([1, 5, 2, 9]) == [2, 5, 9]
    assert VersionPolicy.parse("all").select([2, 1]) == [1, 2]
    for bad in ("newest", "latest:0", "specific:"):
        with pytest.raises(ValueError):
            VersionPolicy.parse(bad)
    with pytest.raises(ValueError):
        parse_labels("stable")
