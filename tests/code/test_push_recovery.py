"""A push killed with SIGKILL: during its copy (a stale ``.incoming-*``) or right after
its rename (a version with no MLMD record). ``pipeline.recovery.recover`` cleans the
first and, for a version it cannot match to a Pusher execution, moves it aside;
whatever a live process is still doing is left alone. (The match to a killed
Pusher execution is tested end to end in tests/e2e/test_recovery.py.)"""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO
from core import config


def _model(tmp_path, files=20):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    for i in range(files):
        (model / "variables" / f"shard{i}").write_bytes(os.urandom(10_000))
    (model / "saved_model.pb").write_bytes(b"pb")
    return model


def _publish_and_die(model, base, *fault):
    """publish_atomically in a child process that SIGKILLs itself at ``fault``."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.faults", *fault, "--python", "core.pushdir:publish_atomically",
         "--", str(model), str(base)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == -9, result.stdout + result.stderr
    return result


@pytest.fixture
def settings(tmp_path):
    return config.load({"home": str(tmp_path / "home")})


def test_a_copy_killed_half_way_leaves_staging_that_recovery_removes(tmp_path, settings):
    from core import pushdir
    from pipeline import recovery

    base = settings.model_push_dir
    _publish_and_die(_model(tmp_path), base, "--kill-at-copy", "5")
    staging = [os.path.basename(p) for p in pushdir.staging_directories(str(base))]
    assert len(staging) == 1 and pushdir.existing_versions(str(base)) == []

    # a concurrent pusher in a live process (its pid is in the name) keeps its directory
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = base / f"{pushdir.INCOMING_PREFIX}99-{sleeper.pid}"
        live.mkdir()
        report = recovery.recover(settings)
        assert sorted(os.listdir(base)) == [live.name]
        assert report.removed_staging == [str(base / staging[0])]
    finally:
        sleeper.kill()
        sleeper.wait()
    # once that process is gone, its directory is stale too
    assert recovery.recover(settings).removed_staging == [str(live)]
    assert os.listdir(base) == []


def test_a_version_without_record_or_known_pusher_is_moved_aside(tmp_path, settings):
    from core import pushdir
    from pipeline import recovery

    base = settings.model_push_dir
    _publish_and_die(_model(tmp_path), base, "--kill-after-rename-into", str(base))
    [version] = pushdir.existing_versions(str(base))
    marker = json.loads((base / str(version) / pushdir.MARKER).read_text())
    assert marker["owner"]["host"] == socket.gethostname()

    report = recovery.recover(settings)
    assert pushdir.existing_versions(str(base)) == []          # no longer served
    aside = base / f"{pushdir.ORPHANED_PREFIX}{version}"
    assert (aside / "saved_model.pb").read_bytes() == b"pb"    # kept for a person to inspect
    assert report.moved_aside == [str(aside)] and report.recorded == []
    assert any(str(version) in line and "moved aside" in line for line in report.lines())


def test_what_a_live_process_pushes_and_what_tfxops_did_not_push_stay(tmp_path, settings):
    from core import pushdir
    from pipeline import recovery

    base = settings.model_push_dir
    # pushed by this (live) process; its MLMD record may still be on its way
    mine = pushdir.publish_atomically(str(_model(tmp_path)), str(base))
    # copied in by hand: no marker, so not ours to move
    foreign = base / str(int(mine) + 1)
    (foreign / "variables").mkdir(parents=True)
    (foreign / "saved_model.pb").write_bytes(b"pb")

    report = recovery.recover(settings)
    assert pushdir.existing_versions(str(base)) == [int(mine), int(mine) + 1]
    assert report.moved_aside == [] and report.recorded == []
    text = "\n".join(report.lines())
    assert f"version {mine}" in text and "still running" in text
    assert f"version {foreign.name}" in text and "left in place" in text


def test_a_copy_of_a_pushed_version_in_another_directory_is_left_in_place(tmp_path, settings):
    """Someone copies a version tfxops pushed elsewhere into this push directory: its
    marker names the other directory, so recovery does not take it for an orphan."""
    from core import pushdir
    from pipeline import recovery

    elsewhere = tmp_path / "elsewhere"
    _publish_and_die(_model(tmp_path), elsewhere, "--kill-after-rename-into", str(elsewhere))
    [version] = pushdir.existing_versions(str(elsewhere))
    shutil.copytree(elsewhere / str(version), settings.model_push_dir / str(version))

    report = recovery.recover(settings)
    assert pushdir.existing_versions(str(settings.model_push_dir)) == [version]
    assert report.moved_aside == [] and any("a copy of a version pushed to" in line for line in report.lines())
