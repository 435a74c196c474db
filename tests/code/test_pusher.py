"""AtomicPusher's publish step: versions appear whole or not at all."""
import os
import threading

import pytest

from core.pushdir import INCOMING_PREFIX, existing_versions, next_version, publish_atomically


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
    assert [n for n in os.listdir(base) if n.startswith(INCOMING_PREFIX) or n.isdigit()] == []
