"""Two monitors at once, and a monitor killed with SIGKILL (issue 12): real
``tfxops monitor`` processes on one monitor directory and one metadata store."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from monitoring import monitor, record
from tests.monitoring.conftest import WAIT, log_records, monitor_settings, write_logs
from core import mlmd
from tfxops import cli


def _chunks(rows, per_request):
    return [rows[i:i + per_request] for i in range(0, len(rows), per_request)]


def _args(settings, *extra):
    return ["monitor", "--home", str(settings.home), "--set", f"metadata_path={settings.metadata_path}",
            "--set", f"serving_dir={settings.serving_dir}", *extra]


def _start(settings, *extra):
    return subprocess.Popen([sys.executable, "-m", "tfxops.cli", *_args(settings, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _window_with_logs(tmp_path, e2e_settings, first_run, rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    write_logs(settings.request_logs_path,
               log_records(_chunks(rows, 10), int(first_run.pushed_version)), 10)
    return settings


def _monitor_executions(settings):
    return record.monitor_executions(mlmd.open_store(settings))


def _state(settings):
    return json.loads((settings.monitor_path / "state.json").read_text())


def test_two_monitors_started_at_once_analyse_the_window_once(tmp_path, e2e_settings, first_run,
                                                              held_out_rows):
    settings = _window_with_logs(tmp_path, e2e_settings, first_run, held_out_rows[:300])
    procs = [_start(settings, "--set", f"monitor_lock_wait_seconds={WAIT}") for _ in range(2)]
    outs = [p.communicate(timeout=4 * WAIT) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
    analysed = [out for out, _ in outs if out.startswith("window ")]
    quiet = [out for out, _ in outs if "no new requests" in out]
    assert len(analysed) == 1 and len(quiet) == 1, outs
    assert "300 rows" in analysed[0]
    assert len(_monitor_executions(settings)) == 1
    state = _state(settings)
    assert len(state["windows"]) == 1 and state["open_window"] is None
    assert sum(f["rows"] for f in state["files"].values()) == 300


def test_a_held_lock_names_its_holder_and_a_killed_holder_does_not_block(tmp_path, e2e_settings, first_run,
                                                                         held_out_rows, capsys):
    settings = _window_with_logs(tmp_path, e2e_settings, first_run, held_out_rows[:100])
    monitor_dir = settings.monitor_path
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom monitoring import lock\n"
         "lock.MonitorLock(sys.argv[1]).acquire(0)\nprint('held', flush=True)\ntime.sleep(600)",
         str(monitor_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(_args(settings)) == 3
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "monitor_lock_wait_seconds" in err
        assert "Traceback" not in err
        assert not (monitor_dir / "state.json").exists()       # nothing was touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the lock file still names the killed process: stale, it blocks nothing
    assert str(holder.pid) in (monitor_dir / "monitor.lock").read_text()
    assert cli.main(_args(settings)) == 0
    out = capsys.readouterr()
    assert "100 rows" in out.out and f"the previous monitor (pid {holder.pid}" in out.out
    assert len(_monitor_executions(settings)) == 1


# A real `tfxops monitor` killed with SIGKILL at a chosen step, injected from the test
# side as tests/faults.py does for the pipeline: the child wraps a function of the
# code under test and kills itself right after it returns (no finally, no atexit).
KILLED_AFTER = """
import os
import signal
import sys
from monitoring import record, window
from tfxops import cli

def killed_after(function):
    def call(*args, **kwargs):
        out = function(*args, **kwargs)
        if sys.argv[1] == "recorded" or args[0].data["open_window"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return call

if sys.argv[1] == "window-persisted":        # the checkpoint that opens the window
    window.Checkpoint.save = killed_after(window.Checkpoint.save)
else:                                        # the window's tfxops.Monitor execution
    record.record_run = killed_after(record.record_run)
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("step", ["window-persisted", "recorded"])
def test_monitor_killed_mid_run_is_resumed_once_by_the_next(tmp_path, e2e_settings, first_run, held_out_rows,
                                                            step):
    settings = _window_with_logs(tmp_path, e2e_settings, first_run, held_out_rows[:300])
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER, step, *_args(settings)],
                            capture_output=True, text=True, timeout=4 * WAIT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    opened = _state(settings)["open_window"]
    assert opened and len(opened["files"]) == 3
    assert len(_monitor_executions(settings)) == (1 if step == "recorded" else 0)

    result = monitor.monitor_once(settings)
    assert result.window == opened["id"] and result.resumed and result.rows == 300
    assert result.versions[0].mlmd.get("recorded_before", False) == (step == "recorded")
    (execution,) = _monitor_executions(settings)
    assert execution.custom_properties["window"].string_value == opened["id"]
    assert execution.custom_properties["rows"].int_value == 300
    state = _state(settings)
    assert state["open_window"] is None and state["windows"] == [opened["id"]]
    assert sum(f["rows"] for f in state["files"].values()) == 300
    assert monitor.monitor_once(settings).status == "no_new_requests"


def test_watch_takes_the_lock_for_each_run_not_for_its_lifetime(tmp_path, e2e_settings, first_run,
                                                                held_out_rows):
    from monitoring import lock

    settings = _window_with_logs(tmp_path, e2e_settings, first_run, held_out_rows[:100])
    state = settings.monitor_path / "state.json"
    err = tmp_path / "watch.err"
    with open(err, "w") as stderr:
        watcher = subprocess.Popen([sys.executable, "-m", "tfxops.cli", *_args(settings, "--watch", "1")],
                                   stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 4 * WAIT
        while not (state.is_file() and json.loads(state.read_text())["windows"]):
            assert watcher.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the first run of --watch never committed"
            time.sleep(0.05)
        # between two runs the watcher holds nothing: another monitor gets the lock ...
        held = lock.MonitorLock(state.parent).acquire(wait_seconds=WAIT)
        try:
            # ... and the watcher's next run finds it held, says so, and keeps watching
            while "another monitor is running" not in err.read_text():
                assert watcher.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "the watcher's next run never met the lock"
                time.sleep(0.05)
        finally:
            held.release()
        assert f"pid {os.getpid()}" in err.read_text() and "exit code 3" in err.read_text()
        assert watcher.poll() is None
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait()
