"""AtomicPusher's publish step: versions appear whole or not at all."""
import os
import threading

import pytest

from core.pushdir import (existing_versions, is_version_name, newest_version, next_version, publish_atomically,
                          staging_directories, version_order)


def _model(tmp_path, files=50):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    for i in range(files):
        (model / "variables" / f"shard{i}").write_bytes(os.urandom(20_000))
    (model / "saved_model.pb").write_bytes(b"pb")
    return model


def test_versions_are_numeric_children_only(tmp_path):
    for name in ["5", "12", ".incoming-13-1", "notes"]:
        (tmp_path / name).mkdir()
    assert existing_versions(str(tmp_path)) == [5, 12]
    assert next_version(str(tmp_path), now=3) == 13          # never below the newest
    assert next_version(str(tmp_path), now=1000) == 1000


def test_the_newest_version_and_what_counts_as_one(tmp_path):
    assert newest_version(str(tmp_path / "missing")) is None and newest_version(str(tmp_path)) is None
    (tmp_path / "7").write_text("a file, not a version")
    for name in ["5", "12", ".orphaned-30", "\u00b2"]:
        (tmp_path / name).mkdir()
    assert existing_versions(str(tmp_path)) == [5, 12] and newest_version(str(tmp_path)) == 12
    assert [is_version_name(n) for n in ("12", ".incoming-13-1", ".orphaned-30", "\u00b2", "")] == [
        True, False, False, False, False]
    assert sorted(["10", "9", "x"], key=version_order) == ["x", "9", "10"]


def test_publish_creates_a_complete_version(tmp_path):
    base = tmp_path / "serving" / "taxi"
    version = publish_atomically(str(_model(tmp_path)), str(base))
    assert os.listdir(base) == [version]
    assert (base / version / "saved_model.pb").read_bytes() == b"pb"
    assert len(os.listdir(base / version / "variables")) == 50
    second = publish_atomically(str(tmp_path / "model"), str(base))
    assert int(second) > int(version)


def test_a_poller_never_sees_a_partial_version(tmp_path):
    base = tmp_path / "serving"
    base.mkdir()
    model = _model(tmp_path, files=300)
    seen_partial, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            for v in existing_versions(str(base)):
                variables = base / str(v) / "variables"
                if not (base / str(v) / "saved_model.pb").exists() or len(os.listdir(variables)) != 300:
                    seen_partial.append(v)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        for _ in range(3):
            publish_atomically(str(model), str(base))
    finally:
        stop.set()
        watcher.join()
    assert not seen_partial
    assert len(existing_versions(str(base))) == 3


def test_a_failed_copy_leaves_nothing(tmp_path):
    base = tmp_path / "serving"
    with pytest.raises(OSError):
        publish_atomically(str(tmp_path / "missing-model"), str(base))
    assert staging_directories(str(base)) == [] and existing_versions(str(base)) == []


@pytest.mark.parametrize("store", ["local", "ram"])
def test_the_pusher_executor_publishes_to_the_destination_it_is_given(tmp_path, store):
    """TFX's Pusher executor, with its artifacts, pushing to a local directory or to
    a store without rename (``ram://``): the version lands there, whole, marker and all."""
    import uuid

    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts, standard_component_specs as spec
    from tfx.utils import proto_utils

    from core import integrity, pushdir, storage
    from pipeline.pusher import AtomicPusherExecutor

    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "trainer")
    _model(tmp_path / "trainer", files=3).rename(tmp_path / "trainer" / "Format-Serving")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    base = str(tmp_path / "serving") if store == "local" else f"ram://{uuid.uuid4().hex}/serving"
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))

    AtomicPusherExecutor().Do(
        {spec.MODEL_KEY: [model], spec.MODEL_BLESSING_KEY: [blessing]}, {spec.PUSHED_MODEL_KEY: [pushed]},
        {spec.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination), spec.CUSTOM_CONFIG_KEY: None})
    [version] = pushdir.existing_versions(base)
    assert pushed.get_string_custom_property("pushed_destination") == f"{base}/{version}"
    assert pushed.get_int_custom_property("pushed") == 1
    assert sorted(storage.listdir(f"{base}/{version}")) == sorted(
        [integrity.MANIFEST_NAME, pushdir.MARKER, "saved_model.pb", "variables"])
    assert integrity.verify_version(f"{base}/{version}", None, require_manifest=True).ok
    assert pushdir.read_marker(f"{base}/{version}")["pushed_model_uri"] == pushed.uri
    assert not os.path.exists("ram:")        # nothing written to a local directory named after the scheme
