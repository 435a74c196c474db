"""Model integrity (issue 16 part 1): every pushed version carries a manifest of its
files' SHA-256 (HMAC-signed with a key); a real ``tfxops serve`` refuses a version
whose files differ (a flipped byte, a dropped-in file, a manifest signed with
another key or not signed) while the version it served keeps answering; the
refusal is in the status, a metric, the audit trail and the server's log;
``tfxops verify`` names each bad file; the compose file runs it before TF Serving."""
import json
import os
import uuid
from pathlib import Path

import grpc
import pytest
import requests
import yaml
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from core import audit, config, integrity, pushdir
from core import features as F
from serving.client import predict_request, serialize_rows
from serving.models import AVAILABLE, END, ModelManager
from tests.conftest import REPO
from tests.serving import conftest as serving_fixtures
from tests.serving.conftest import serving_settings
from tests.serving.serve_proc import ServeProcess, until

pushed_model = serving_fixtures.pushed_model     # the session's real AtomicPusher push
rows = serving_fixtures.rows

KEY_ENV = "TFXOPS_MODEL_KEY"               # the default model_integrity_key_env
OTHER_KEY_ENV = "TFXOPS_TEST_OTHER_MODEL_KEY"
FAILURES = ":tensorflow:serving:tfxops_model_integrity_failures"


def _publish(model, base, key_env=KEY_ENV) -> Path:
    """A real push of ``model`` (publish_atomically, as the Pusher does) under ``base``."""
    return Path(base) / pushdir.publish_atomically(str(model), str(base), integrity_key_env=key_env)


def _variables_data(version: Path) -> Path:
    [data] = sorted((version / "variables").glob("variables.data-*"))
    return data


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ the Pusher's manifest
def test_the_pipelines_push_carries_a_manifest_of_every_file(pushed_model):
    """The session's real AtomicPusher push: the manifest lists every file of the
    version (model card and input domain included: written after the stagers), the
    push marker and the manifest itself aside."""
    version = Path(pushed_model)
    manifest = json.loads((version / integrity.MANIFEST_NAME).read_text())
    files = {str(p.relative_to(version)) for p in version.rglob("*") if p.is_file()}
    assert {entry["path"] for entry in manifest["files"]} == files - {pushdir.MARKER, integrity.MANIFEST_NAME}
    assert any(path.startswith("assets.extra/model_card/") for path in files)
    assert integrity.verify_version(version, None, require_manifest=True).ok


def test_the_pusher_signs_with_the_key_of_the_variable_model_integrity_key_env_names(tmp_path, monkeypatch):
    """``--set model_integrity_key_env=VAR`` reaches the AtomicPusher (exec property),
    whose executor signs the version with VAR's key: the server holding that key
    accepts it, another key refuses it."""
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts, standard_component_specs as spec
    from tfx.utils import proto_utils

    from pipeline.pipeline import create_pipeline
    from pipeline.pusher import INTEGRITY_KEY_ENV_KEY, AtomicPusherExecutor
    from pipeline.runner import pipeline_arguments

    settings = config.load({"home": str(tmp_path), "model_integrity_key_env": "TFXOPS_TEST_PUSH_KEY"}, environ={})
    [pusher] = [n for n in create_pipeline(**pipeline_arguments(settings, "/data")).components if n.id == "Pusher"]
    assert pusher.exec_properties[INTEGRITY_KEY_ENV_KEY] == "TFXOPS_TEST_PUSH_KEY"

    monkeypatch.setenv("TFXOPS_TEST_PUSH_KEY", "the pusher's key")
    model, blessing, pushed = standard_artifacts.Model(), standard_artifacts.ModelBlessing(), \
        standard_artifacts.PushedModel()
    model.uri, blessing.uri, pushed.uri = str(tmp_path / "trainer"), str(tmp_path / "blessing"), str(tmp_path / "pushed")
    (tmp_path / "trainer" / "Format-Serving" / "variables").mkdir(parents=True)
    (tmp_path / "trainer" / "Format-Serving" / "saved_model.pb").write_bytes(b"a graph")
    (tmp_path / "trainer" / "Format-Serving" / "variables" / "variables.index").write_bytes(b"an index")
    blessing.set_int_custom_property("blessed", 1)
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
        base_directory=str(tmp_path / "serving")))
    AtomicPusherExecutor().Do(
        {spec.MODEL_KEY: [model], spec.MODEL_BLESSING_KEY: [blessing]}, {spec.PUSHED_MODEL_KEY: [pushed]},
        {spec.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination), spec.CUSTOM_CONFIG_KEY: None,
         INTEGRITY_KEY_ENV_KEY: "TFXOPS_TEST_PUSH_KEY"})
    version = pushed.get_string_custom_property("pushed_destination")
    checked = integrity.verify_version(version, b"the pusher's key", require_manifest=True)
    assert checked.ok and checked.signed
    assert not integrity.verify_version(version, b"another key", require_manifest=True).ok


# ------------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def served(tmp_path_factory, pushed_model):
    """``tfxops serve`` with a key in TFXOPS_MODEL_KEY, serving one signed version."""
    tmp = tmp_path_factory.mktemp("integrity")
    settings = serving_settings(tmp)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, "the pipeline's key")
        env.setenv(OTHER_KEY_ENV, "an attacker's key")
        good = _publish(pushed_model, settings.model_push_dir)
        with ServeProcess(settings, tmp) as server:
            server.home, server.good = tmp, int(good.name)
            yield server


def _drop_in(served, pushed_model, tamper, key_env=KEY_ENV) -> int:
    """A version pushed elsewhere, tampered with there, then renamed into the served
    push directory whole, as the newest version (how a push appears); its number."""
    staged = _publish(pushed_model, served.home / f"elsewhere-{uuid.uuid4().hex}", key_env)
    tamper(staged)
    push_dir = served.settings.model_push_dir
    number = max(int(p.name) for p in push_dir.iterdir() if p.name.isdigit()) + 1
    os.rename(staged, push_dir / str(number))
    return number


def _refusal(served, version: int) -> str:
    """The version's status once the server has dealt with it: END, its message."""
    url = f"http://127.0.0.1:{served.settings.rest_port}/v1/models/taxi/versions/{version}"

    def ended():
        answer = requests.get(url, timeout=30)
        status = answer.json().get("model_version_status", [{}])[0] if answer.ok else {}
        return status if status.get("state") == END else None
    status = until(ended, f"version {version} refused", timeout=120)
    assert status["status"]["error_code"] == "FAILED_PRECONDITION"
    return status["status"]["error_message"]


def _answering_version(served, rows) -> int:
    """The version a Predict without a version is answered by."""
    with grpc.insecure_channel(f"127.0.0.1:{served.settings.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request("taxi", serialize_rows(rows[:3])), timeout=60)
    assert len(response.outputs[F.PREDICTION_KEY].float_val) == 3
    return response.model_spec.version.value


def _refused_in_audit(served, version: int) -> str:
    entries = list(audit.entries(served.home / "audit" / "audit.jsonl"))
    [entry] = [e for e in entries if e["action"] == audit.MODEL_REFUSED and e["model_version"] == str(version)]
    assert entry["actor"].startswith("server:")
    return entry["reason"]


def test_a_flipped_byte_in_the_variables_is_refused_and_the_served_version_keeps_answering(
        served, pushed_model, rows):
    assert _answering_version(served, rows) == served.good
    before = served.counter(FAILURES)
    bad = _drop_in(served, pushed_model, lambda version: _flip_one_byte(_variables_data(version)))
    data_file = f"variables/{_variables_data(served.settings.model_push_dir / str(bad)).name}"
    message = _refusal(served, bad)
    assert f"{data_file}: changed" in message and "Fix: push the model again" in message
    assert "Traceback" not in message
    # gRPC's GetModelStatus says the same
    with grpc.insecure_channel(f"127.0.0.1:{served.settings.grpc_port}") as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "taxi"
        request.model_spec.version.value = bad
        [status] = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30) \
            .model_version_status
    assert data_file in status.status.error_message
    assert served.wait_counter(FAILURES, before + 1) == before + 1
    assert data_file in _refused_in_audit(served, bad)
    assert f"version {bad} REFUSED" in served.log() and data_file in served.log()
    assert _answering_version(served, rows) == served.good                 # the previous one serves on


def test_a_file_dropped_into_a_version_is_refused(served, pushed_model, rows):
    before = served.counter(FAILURES)

    def drop_in_a_file(version: Path):
        (version / "assets.extra" / "payload.py").write_text("import os\n")
    bad = _drop_in(served, pushed_model, drop_in_a_file)
    assert "assets.extra/payload.py: extra (not in the manifest)" in _refusal(served, bad)
    assert served.wait_counter(FAILURES, before + 1) == before + 1
    assert "assets.extra/payload.py" in _refused_in_audit(served, bad)
    assert _answering_version(served, rows) == served.good


def test_a_manifest_signed_with_another_key_or_not_signed_is_refused(served, pushed_model, rows):
    """Files rewritten together with their manifest: without the key, the signature
    cannot be made, and an unsigned manifest is refused when a key is configured."""
    before = served.counter(FAILURES)
    other_key = _drop_in(served, pushed_model, lambda version: None, key_env=OTHER_KEY_ENV)
    assert f"{integrity.MANIFEST_NAME}: bad signature" in _refusal(served, other_key)
    unsigned = _drop_in(served, pushed_model, lambda version: None, key_env="")
    assert f"{integrity.MANIFEST_NAME}: not signed" in _refusal(served, unsigned)
    assert served.wait_counter(FAILURES, before + 2) == before + 2
    assert _answering_version(served, rows) == served.good


def test_a_signed_untouched_version_is_served(served, pushed_model, rows):
    """The same drop-in, untouched and signed with the server's key: it loads and
    answers (the refusals above are for what was done to the files)."""
    good = _drop_in(served, pushed_model, lambda version: None)
    until(lambda: _answering_version(served, rows) == good, f"version {good} serving", timeout=120)
    assert f"version {good} matches its manifest" in served.log()


# ------------------------------------------------------------------ modes, in-process
def _swap_first_two_lines(path: Path) -> None:
    """A vocabulary reordered: the same size, another meaning (TensorFlow checks no asset)."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([lines[1], lines[0], *lines[2:]]))


def test_require_refuses_a_version_without_manifest_verify_serves_it_off_checks_nothing(
        tmp_path, pushed_model, caplog):
    push_dir = tmp_path / "taxi"
    version = _publish(pushed_model, push_dir, key_env="")
    (version / integrity.MANIFEST_NAME).unlink()                  # pushed by another tool
    tampered = _publish(pushed_model, tmp_path / "tampered" / "taxi", key_env="")
    _swap_first_two_lines(tampered / "assets" / "payment_type")   # Cash <-> Credit Card

    def loaded(base, mode):
        manager = ModelManager("taxi", str(base), integrity=integrity.IntegrityPolicy(mode))
        manager.poll_once()
        try:
            return manager.status("taxi")[0]
        finally:
            manager.stop(wait_seconds=0)
    refused = loaded(push_dir, "require")
    assert refused.state == END and refused.error_code == "FAILED_PRECONDITION"
    assert f"{integrity.MANIFEST_NAME}: missing (model_integrity is require" in refused.error_message
    assert loaded(push_dir, "verify").state == AVAILABLE
    assert "has no integrity manifest" in caplog.text and "served unverified" in caplog.text
    refused = loaded(tampered.parent, "verify")
    assert refused.state == END and "assets/payment_type: changed" in refused.error_message
    assert loaded(tampered.parent, "off").state == AVAILABLE       # TensorFlow alone loads it


# ------------------------------------------------------------------ tfxops verify
def _verify(capsys, home, *args):
    from tfxops import cli

    code = cli.main(["verify", "--home", str(home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tfxops_verify_names_each_bad_file_and_the_fix(tmp_path, pushed_model, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = config.load({"home": str(tmp_path)})
    good = int(_publish(pushed_model, settings.model_push_dir).name)
    bad_dir = _publish(pushed_model, settings.model_push_dir)
    bad = int(bad_dir.name)
    data_file = f"variables/{_variables_data(bad_dir).name}"
    _flip_one_byte(bad_dir / data_file)
    (bad_dir / "saved_model.pb").unlink()

    code, out, err = _verify(capsys, tmp_path)
    assert code == 1
    assert f"version {good}: ok" in out and f"version {bad}: FAILED" in out
    assert f"  {data_file}: changed" in out and "  saved_model.pb: missing" in out
    assert f"version(s) {bad} of " in err and "Fix: push the model again" in err and "Traceback" not in err
    assert _verify(capsys, tmp_path, str(good))[0] == 0
    code, out, _ = _verify(capsys, tmp_path, str(bad), "--json")
    [result] = json.loads(out)["versions"]
    assert code == 1 and result["version"] == str(bad) and not result["ok"]
    assert sorted(result["problems"]) == sorted([f"{data_file}: changed (its SHA-256 differs from the manifest's)",
                                                 "saved_model.pb: missing (the manifest lists it)"])
    code, _, err = _verify(capsys, tmp_path, "42")
    assert code == 2 and "no version 42" in err
    code, _, err = _verify(capsys, tmp_path / "nothing-here")
    assert code == 2 and "no model directory" in err
    code, _, err = _verify(capsys, tmp_path, "--set", "model_integrity=maybe")
    assert code == 2 and "'model_integrity' must be one of verify, require, off" in err


def test_tfxops_verify_keys_manifest_less_versions_and_sync_models_copies_the_manifest(
        tmp_path, pushed_model, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = config.load({"home": str(tmp_path)})
    version = _publish(pushed_model, settings.model_push_dir)
    code, out, _ = _verify(capsys, tmp_path)
    assert code == 0 and f"version {version.name}: ok (not signed)" in out
    monkeypatch.setenv(KEY_ENV, "a key the push did not have")
    code, out, _ = _verify(capsys, tmp_path)
    assert code == 1 and f"{integrity.MANIFEST_NAME}: not signed" in out
    monkeypatch.delenv(KEY_ENV)
    # `tfxops sync-models` (what TF Serving watches) copies the manifest with the version
    from tfxops import cli
    mirror = tmp_path / "tf-serving"
    assert cli.main(["sync-models", "--home", str(tmp_path), "--to", str(mirror / "taxi"), "--once"]) == 0
    capsys.readouterr()
    code, out, _ = _verify(capsys, tmp_path, "--set", f"serving_dir={mirror}")
    assert code == 0 and f"version {version.name}: ok" in out
    (version / integrity.MANIFEST_NAME).unlink()
    code, out, _ = _verify(capsys, tmp_path)
    assert code == 0 and "no manifest: not verified" in out
    code, out, _ = _verify(capsys, tmp_path, "--set", "model_integrity=require")
    assert code == 1 and f"{integrity.MANIFEST_NAME}: missing" in out


# ------------------------------------------------------------------ compose
def test_compose_verifies_the_model_volume_before_tf_serving_starts():
    settings = config.load({}, environ={})
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    verify, serving = services["verify-models"], services["serving"]
    assert serving["depends_on"]["verify-models"] == {"condition": "service_completed_successfully"}
    assert verify["image"] == services["proxy"]["image"] and verify["entrypoint"] == []
    command = verify["command"]
    assert command[:2] == ["tfxops", "verify"]
    serving_dir = command[command.index("--set") + 1].split("=", 1)[1]
    model_dir = f"{serving_dir}/{settings.model_name}"
    # it checks the very directory TF Serving loads, mounted read-only
    [tf_serving_models] = [v for v in serving["volumes"] if v.split(":")[1] == f"/models/{settings.model_name}"]
    assert f"{tf_serving_models.split(':')[0]}:{model_dir}:ro" in verify["volumes"]
    assert settings.model_integrity_key_env in verify["environment"]


def test_every_compose_service_that_pushes_signs_with_the_key_verify_models_checks():
    """The monitor retrains and re-pushes into the model volume: without the key its
    pushes are unsigned and verify-models refuses TF Serving's next start."""
    settings = config.load({}, environ={})
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    pushers = [name for name, service in services.items()
               if service.get("command", [])[:2] in (["tfxops", "monitor"], ["tfxops", "run"])]
    assert "monitor" in pushers
    key = settings.model_integrity_key_env
    for name in pushers + ["verify-models"]:
        assert services[name].get("environment", {}).get(key) == f"${{{key}:-}}", name
