"""Model integrity (issue 16 part 1): every pushed version carries a manifest of its
files' SHA-256 (HMAC-signed with a key); a real ``tfxops serve`` refuses a version
whose files differ (a flipped byte, a dropped-in file, a manifest signed with
another key or not signed) while the version it served keeps answering; the
refusal is in the status, a metric, the audit trail and the server's log;
``tfxops verify`` names each bad file; the compose file runs it before TF Serving."""
import hashlib
import hmac
import json
import logging
import os
import shutil
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
    version (model card and input domain included: written after the stagers; the
    push marker too), the manifest itself aside, and the version and model it is."""
    version = Path(pushed_model)
    manifest = json.loads((version / integrity.MANIFEST_NAME).read_text())
    files = {str(p.relative_to(version)) for p in version.rglob("*") if p.is_file()}
    assert {entry["path"] for entry in manifest["files"]} == files - {integrity.MANIFEST_NAME}
    assert pushdir.MARKER in files
    assert (manifest["version"], manifest["model"]) == (version.name, version.parent.name)
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
    """A version pushed elsewhere (a directory of the same model name, numbered past
    the served ones), tampered with there, then renamed into the served push
    directory whole under its own number, as the newest version (how a push
    appears); its number."""
    push_dir = served.settings.model_push_dir
    elsewhere = served.home / f"elsewhere-{uuid.uuid4().hex}" / push_dir.name
    (elsewhere / str(_newest(push_dir))).mkdir(parents=True)       # the next number is past it
    staged = _publish(pushed_model, elsewhere, key_env)
    tamper(staged)
    os.rename(staged, push_dir / staged.name)
    return int(staged.name)


def _newest(push_dir: Path) -> int:
    return max(int(p.name) for p in push_dir.iterdir() if p.name.isdigit())


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


def test_a_signed_version_copied_to_a_newer_number_is_refused(served, rows):
    """Replay: a writer without the key copies a signed version (the served one, or an
    old superseded one) to a higher number, to be loaded as the newest. Its files and
    signature are intact; the manifest names the version it was published as."""
    push_dir = served.settings.model_push_dir
    before = served.counter(FAILURES)
    replayed = _newest(push_dir) + 1
    shutil.copytree(push_dir / str(served.good), push_dir / f".copy-{replayed}")
    os.rename(push_dir / f".copy-{replayed}", push_dir / str(replayed))       # appears whole
    message = _refusal(served, replayed)
    assert f"published as version {served.good}, found as version {replayed}" in message
    assert served.wait_counter(FAILURES, before + 1) == before + 1
    assert f"published as version {served.good}" in _refused_in_audit(served, replayed)
    assert _answering_version(served, rows) != replayed


# ------------------------------------------------------------------ modes, in-process
MODEL_KEY = "the pipeline's key"


def _signed_old_format(version: Path, key: str) -> None:
    """The manifest as tfxops wrote it before it named its version and model, signed."""
    manifest = json.loads((version / integrity.MANIFEST_NAME).read_text())
    body = {name: manifest[name] for name in ("format", "files")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    body["signature"] = integrity.SIGNATURE_PREFIX + hmac.new(key.encode(), canonical, hashlib.sha256).hexdigest()
    (version / integrity.MANIFEST_NAME).write_text(json.dumps(body))


def test_a_version_replayed_under_another_number_or_model_or_with_an_edited_marker_is_refused(
        tmp_path, pushed_model, monkeypatch):
    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    key = MODEL_KEY.encode()
    version = _publish(pushed_model, tmp_path / "taxi")
    number = int(version.name)
    assert integrity.verify_version(version, key, require_manifest=True).ok

    def problems(copy: Path):
        shutil.copytree(version, copy)
        checked = integrity.verify_version(copy, key, require_manifest=True)
        assert not checked.ok
        return checked.summary()
    assert f"published as version {number}, found as version {number + 1}" in problems(tmp_path / "taxi" / str(number + 1))
    assert "published for model 'taxi', found under 'fraud'" in problems(tmp_path / "fraud" / version.name)
    # the same number under a directory of the model's name (sync-models, TF Serving's /models/taxi) verifies
    shutil.copytree(version, tmp_path / "tf-serving" / "taxi" / version.name)
    assert integrity.verify_version(tmp_path / "tf-serving" / "taxi" / version.name, key, True).ok
    # a signed manifest of the format before the binding: refused with a key, not replayable
    old = tmp_path / "old" / "taxi" / str(number + 2)
    shutil.copytree(version, old)
    _signed_old_format(old, MODEL_KEY)
    assert "names no version and model" in integrity.verify_version(old, key, True).summary()
    # the push marker (audit evidence and lineage read it): edited, with or without a key
    marker = json.loads((version / pushdir.MARKER).read_text())
    (version / pushdir.MARKER).write_text(json.dumps(dict(marker, run_id="a run that never pushed this")))
    for checking_key in (key, None):
        assert f"{pushdir.MARKER}: changed" in integrity.verify_version(version, checking_key, True).summary()


def test_an_object_store_push_covers_its_marker_written_last(tmp_path, pushed_model, monkeypatch):
    """On a store without rename the marker is written into the version last; the
    manifest holds its final content all the same. (TensorFlow's ram:// lists
    ``assets.extra``'s files under ``assets`` too, and appends to a file written
    again: the model goes without them and without its old manifest.)"""
    from core import storage

    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    model = tmp_path / "model"
    shutil.copytree(pushed_model, model, ignore=shutil.ignore_patterns("assets.extra", pushdir.MARKER,
                                                                       integrity.MANIFEST_NAME))
    base = f"ram://tfxops-{uuid.uuid4().hex}/models/taxi"
    version = f"{base}/{pushdir.publish_atomically(str(model), base)}"
    assert integrity.verify_version(version, MODEL_KEY.encode(), require_manifest=True).ok
    marker = storage.join(version, pushdir.MARKER)
    storage.write_text(marker, storage.read_text(marker).replace('"base_directory"', '"forged": 1, "base_directory"'))
    assert f"{pushdir.MARKER}: changed" in integrity.verify_version(version, MODEL_KEY.encode(), True).summary()


def test_sync_models_copies_only_verified_versions_and_names_the_others(tmp_path, pushed_model, capsys, monkeypatch):
    """TF Serving checks nothing: sync-models is its gate. A tampered version and a
    replayed one are not copied (exit 1 naming their files); the good one is."""
    from tfxops import cli

    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    settings = config.load({"home": str(tmp_path)})
    good = _publish(pushed_model, settings.model_push_dir)
    bad = _publish(pushed_model, settings.model_push_dir)
    data_file = f"variables/{_variables_data(bad).name}"
    _flip_one_byte(bad / data_file)
    replayed = settings.model_push_dir / str(int(bad.name) + 1)
    shutil.copytree(good, replayed)
    mirror = tmp_path / "tf-serving" / settings.model_name
    argv = ["sync-models", "--home", str(tmp_path), "--to", str(mirror), "--once"]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert os.listdir(mirror) == [good.name] and f"version {good.name}: copied" in out
    assert f"version {bad.name} of {settings.model_push_dir} NOT copied" in err and f"{data_file}: changed" in err
    assert f"version {replayed.name} of" in err and f"published as version {good.name}" in err
    assert "Fix: push the model again" in err and "Traceback" not in err
    code, out, _ = _verify(capsys, tmp_path, "--set", f"serving_dir={mirror.parent}")
    assert code == 0 and f"version {good.name}: ok (signature checked)" in out
    # into a directory of another name every copy would fail its check: refused before copying
    assert cli.main(argv[:-3] + ["--to", str(tmp_path / "tf-serving" / "other"), "--once"]) == 2
    assert f"must end in /{settings.model_name}" in capsys.readouterr().err
    assert not (tmp_path / "tf-serving" / "other").exists()


def test_a_key_or_salt_shorter_than_16_bytes_is_refused_naming_its_variable(tmp_path, pushed_model, capsys,
                                                                              monkeypatch):
    from core.redact import Redaction, RedactionError
    from core.secrets import SecretError
    from tfxops import cli

    monkeypatch.setenv(KEY_ENV, "k")
    settings = config.load({"home": str(tmp_path)})
    with pytest.raises(SecretError, match=f"{KEY_ENV} .*holds 1 bytes: use at least 16"):
        _publish(pushed_model, settings.model_push_dir)
    assert os.listdir(settings.model_push_dir) == []                 # nothing published, no staging left
    for command in (["verify"], ["serve"], ["sync-models", "--to", str(tmp_path / "m" / "taxi"), "--once"]):
        assert cli.main([command[0], "--home", str(tmp_path), *command[1:]]) == 2, command
        err = capsys.readouterr().err
        assert f"{KEY_ENV} (the model manifests' HMAC key" in err and "Traceback" not in err
    monkeypatch.setenv(KEY_ENV, "k" * 16)
    assert integrity.verify_version(_publish(pushed_model, settings.model_push_dir), b"k" * 16, True).ok

    monkeypatch.setenv(settings.audit_key_env, "short")
    with pytest.raises(audit.AuditError, match=settings.audit_key_env):
        audit.signing_key(settings)
    written = audit.record(settings, audit.MODEL_REFUSED, "a test")
    assert written.error and settings.audit_key_env in written.error      # reported, not raised
    assert cli.main(["audit", "--home", str(tmp_path), "--verify"]) == 2
    assert settings.audit_key_env in capsys.readouterr().err

    hashed = config.load({"home": str(tmp_path), "log_hash_features": "payment_type",
                          "retrain_with_feedback": "false"})
    with pytest.raises(RedactionError, match=f"{hashed.log_hash_salt_env} .*holds 4 bytes"):
        Redaction.from_settings(hashed, environ={hashed.log_hash_salt_env: "salt"})
    assert Redaction.from_settings(hashed, environ={hashed.log_hash_salt_env: "s" * 16}).salt == b"s" * 16


def test_require_without_a_key_warns_that_signatures_are_not_checked(tmp_path, pushed_model, capsys, caplog,
                                                                      monkeypatch):
    from tfxops import cli

    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = config.load({"home": str(tmp_path)})
    _publish(pushed_model, settings.model_push_dir)
    code, _, err = _verify(capsys, tmp_path, "--set", "model_integrity=require")
    assert code == 0 and "checked for content only" in err and f"set {KEY_ENV}" in err
    assert "content only" not in _verify(capsys, tmp_path)[2]                       # verify: no claim to warn about
    with caplog.at_level(logging.WARNING):
        assert cli.main(["serve", "--home", str(tmp_path / "no-models"), "--set", "model_integrity=require"]) == 2
    assert "checked for content only" in caplog.text


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
