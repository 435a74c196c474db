"""`kill -9` of `tfxops run` at the moments that used to leave things in limbo: during
the Pusher's copy, right after the Pusher's rename (a servable version with no
MLMD record), and in the middle of training (a run shown as "running" forever).

Each test works on a copy of the end-to-end store in a home of its own: every
component is cached there except the Pusher (its destination differs), so a run
takes seconds of pipeline time, and the shared store is left as it was.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from core.pushdir import existing_versions, staging_directories
from tests.conftest import E2E_OVERRIDES, REPO
from tests.lineage.conftest import lineage_cli, settings_args
from core import config, mlmd


@pytest.fixture
def home(first_run, e2e_settings, tmp_path):
    assert first_run.ok, first_run.error
    source = sqlite3.connect(str(e2e_settings.metadata_file))
    target = sqlite3.connect(str(tmp_path / "metadata.sqlite"))
    source.backup(target)
    source.close()
    target.close()
    return config.load(dict(E2E_OVERRIDES, home=str(tmp_path), data_dir=str(e2e_settings.data_dir)))


def _command(settings, *fault, extra=()):
    overrides = [f"--set={k}={v}" for k, v in E2E_OVERRIDES.items()]
    return [sys.executable, "-m", "tests.faults", *fault, "--", "run", "--home", settings.home,
            "--data", str(settings.data_dir), *overrides, *extra]


def _run(settings, *fault, extra=()):
    return subprocess.run(_command(settings, *fault, extra=extra), capture_output=True, text=True,
                          cwd=REPO, timeout=900)


def _runs(settings):
    code, out, err = lineage_cli("runs", "--json", *settings_args(settings))
    assert code == 0, err
    return json.loads(out)


def test_a_killed_push_is_cleaned_or_recorded_by_the_next_run(home):
    base = home.model_push_dir

    # 1. killed while copying: a half-written staging directory, nothing visible
    killed = _run(home, "--kill-at-copy", "3")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    staging = [os.path.basename(p) for p in staging_directories(str(base))]
    assert len(staging) == 1 and existing_versions(str(base)) == []

    # 2. killed right after the rename: a whole, servable version without a record
    killed = _run(home, "--kill-after-rename-into", str(base))
    assert killed.returncode == -9, killed.stdout + killed.stderr
    [orphan] = [str(v) for v in existing_versions(str(base))]
    assert (base / orphan / "saved_model.pb").is_file()
    assert not (base / staging[0]).exists(), "the second run did not remove the first one's staging"
    code, _, err = lineage_cli("model", orphan, "--no-metrics", *settings_args(home))
    assert code == 2 and f"version {orphan}" in err and "tfxops run" in err, err
    assert "Traceback" not in err

    # 3. the next run records the orphan as its Pusher's output; the Pusher is then
    #    cached: no second copy of the same model
    rerun = _run(home, extra=["--json"])
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["recovery"]["recorded"] == [orphan], summary["recovery"]
    assert f"recorded version {orphan}" in rerun.stderr
    assert summary["pushed"] is False and summary["cached_push_version"] == orphan
    assert existing_versions(str(base)) == [int(orphan)]

    code, out, err = lineage_cli("model", orphan, "--no-metrics", "--json", *settings_args(home))
    assert code == 0, err
    report = json.loads(out)
    rows = _runs(home)
    by_status = {r["run_id"]: r["status"] for r in rows}
    killed_after_rename, killed_in_copy = rows[1]["run_id"], rows[2]["run_id"]
    assert report["run_id"] == killed_after_rename and report["pushed_by"]["node_id"] == "Pusher"
    assert report["summary"]["evaluation"]["blessed"] is True
    assert "the Pusher's process died" in report["tree"]["produced_by"][0]["facts"]["recovered"]
    assert by_status[killed_after_rename] == "complete"       # its push is recorded now
    assert by_status[killed_in_copy] == "abandoned"           # its process died mid-way
    assert rows[1]["pushed_version"] == orphan
    assert {c["node_id"]: c["state"] for c in rows[1]["components"]}["Pusher"] == "recovered"
    assert {c["node_id"]: c["state"] for c in rows[2]["components"]}["Pusher"] == "abandoned"


def test_a_run_killed_mid_way_shows_as_abandoned(home):
    """A live run is "running"; once `kill -9` has ended its process, "abandoned"."""
    process = subprocess.Popen(_command(home, extra=["--set", "train_steps=121"]), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in process.stdout:               # one line per finished component
            if "Transform" in line:
                break
        deadline = time.monotonic() + 300
        while True:                               # Trainer registered as RUNNING
            runs = _runs(home)
            states = {c["node_id"]: c["state"] for c in runs[0]["components"]}
            if states.get("Trainer") == "running":
                break
            assert process.poll() is None and time.monotonic() < deadline, states
            time.sleep(0.2)
        assert runs[0]["status"] == "running"
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()

    row = _runs(home)[0]
    assert row["status"] == "abandoned", row
    assert {c["node_id"]: c["state"] for c in row["components"]}["Trainer"] == "abandoned"
    code, text, _ = lineage_cli("runs", *settings_args(home))
    assert code == 0 and "abandoned" in text.splitlines()[1]
    store = mlmd.open_store(home)
    assert mlmd.find_run(store, home.pipeline_name).name == row["run_id"]
