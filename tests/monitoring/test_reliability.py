"""Faults of the monitor's inputs (issue 12), with real files from the real writer:
a log file still being written, a file corrupt in the middle, a version without
lineage in the window, a request-log directory that does not exist."""
import json
import os
import time
from pathlib import Path

from monitoring import monitor
from monitoring.window import Checkpoint
from core.request_log import tfrecord_frame
from tests.monitoring.conftest import log_records, monitor_settings, write_logs
from tfxops import cli


def _chunks(rows, per_request):
    return [rows[i:i + per_request] for i in range(0, len(rows), per_request)]


def _cli(settings, *extra):
    return ["monitor", "--home", str(settings.home), "--set", f"metadata_path={settings.metadata_path}",
            "--set", f"serving_dir={settings.serving_dir}", *extra]


def _record_ends(data: bytes):
    """Byte offsets where each TFRecord of ``data`` ends (the framing's own lengths)."""
    ends, pos = [], 0
    while pos < len(data):
        pos += 12 + int.from_bytes(data[pos:pos + 8], "little") + 4
        ends.append(pos)
    return ends


def _cut_mid_record(data: bytes, record: int) -> bytes:
    """``data`` cut in the middle of record ``record``'s payload (a copy still running)."""
    ends = _record_ends(data)
    start = ends[record - 1] if record else 0
    return data[:start + 12 + (ends[record] - start - 16) // 2]


def _state(settings) -> Checkpoint:
    return Checkpoint(settings.monitor_path)


def test_half_written_file_is_retried_until_complete_and_counted_once(tmp_path, e2e_settings, first_run,
                                                                     held_out_rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    files = write_logs(settings.request_logs_path,
                       log_records(_chunks(held_out_rows[:300], 10), version), 10)
    assert len(files) == 3
    whole = files[1].read_bytes()
    files[1].write_bytes(_cut_mid_record(whole, 6))      # a log shipper is still copying it

    first = monitor.monitor_once(settings)
    assert first.rows == 200 and first.versions[0].rows == 200
    assert [f["file"] for f in first.incomplete_files] == [files[1].name]
    assert "truncated" in first.incomplete_files[0]["error"]
    assert first.quarantined_files == []
    assert "1 file(s) incomplete" in first.summary_line()
    assert files[1].name not in _state(settings).data["files"]
    html = Path(first.report.html).read_text()
    assert files[1].name in html and "incomplete" in html

    files[1].write_bytes(whole)                            # the copy completes
    second = monitor.monitor_once(settings)
    assert second.files == [files[1].name] and second.rows == 100
    assert second.incomplete_files == [] and second.quarantined_files == []
    assert monitor.monitor_once(settings).status == "no_new_requests"
    analysed = _state(settings).data["files"]
    assert {n: f["status"] for n, f in analysed.items()} == {p.name: "analysed" for p in files}
    assert sum(f["rows"] for f in analysed.values()) == 300


def test_file_corrupt_in_the_middle_is_quarantined_and_never_retried(tmp_path, e2e_settings, first_run,
                                                                     held_out_rows, capsys):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    files = write_logs(settings.request_logs_path,
                       log_records(_chunks(held_out_rows[:400], 10), version), 10)
    flipped, stale = files[0], files[2]
    data = bytearray(flipped.read_bytes())
    data[_record_ends(bytes(data))[3] + 40] ^= 0xFF        # a bit flip inside record 4 of 10
    flipped.write_bytes(bytes(data))
    # a truncated file nobody has touched for longer than the grace period: closed, corrupt
    stale.write_bytes(_cut_mid_record(stale.read_bytes(), 9))
    old = time.time() - 2 * settings.monitor_incomplete_grace_seconds
    os.utime(stale, (old, old))

    assert cli.main(_cli(settings, "--json")) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["rows"] == 200 and result["incomplete_files"] == []
    quarantined = {q["file"]: q for q in result["quarantined_files"]}
    assert quarantined.keys() == {flipped.name, stale.name}
    assert "checksum" in quarantined[flipped.name]["error"]
    assert "truncated" in quarantined[stale.name]["error"]
    assert "monitor_incomplete_grace_seconds" in quarantined[stale.name]["error"]
    for name, q in quarantined.items():                   # moved aside, out of the log directory
        assert not (settings.request_logs_path / name).exists()
        assert Path(q["moved_to"]) == settings.monitor_path / "quarantine" / name
        assert Path(q["moved_to"]).is_file()
    assert "2 file(s) quarantined" in captured.err
    html = Path(result["report"]["html"]).read_text()
    assert flipped.name in html and stale.name in html and "quarantine" in html.lower()
    state = _state(settings).data["files"]
    assert state[flipped.name]["status"] == state[stale.name]["status"] == "quarantined"

    # never retried, even when a file of that name shows up again in the log directory
    (settings.request_logs_path / flipped.name).write_bytes(bytes(data))
    assert monitor.monitor_once(settings).status == "no_new_requests"


def test_corrupt_last_record_of_a_fresh_file_is_incomplete_not_corrupt(tmp_path, e2e_settings, first_run,
                                                                       held_out_rows):
    """A writer that extended the file before filling it (zeros, or a torn last record):
    still being written while it is young, so retried, not quarantined."""
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    files = write_logs(settings.request_logs_path,
                       log_records(_chunks(held_out_rows[:200], 10), version), 10)
    zeros, torn = files
    zeros.write_bytes(zeros.read_bytes() + bytes(len(tfrecord_frame(b"x" * 500))))
    data = bytearray(torn.read_bytes())
    data[-10] ^= 0xFF                                     # inside the last record's payload
    torn.write_bytes(bytes(data))
    result = monitor.monitor_once(settings)
    assert sorted(f["file"] for f in result.incomplete_files) == sorted([zeros.name, torn.name])
    assert result.quarantined_files == [] and result.status == "incomplete"
    assert zeros.exists() and torn.exists()


def test_version_without_lineage_is_reported_not_judged_and_the_window_moves_on(
        tmp_path, e2e_settings, first_run, held_out_rows, capsys):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    logs = settings.request_logs_path
    write_logs(logs, log_records(_chunks(held_out_rows[:300], 10), version, prefix="known")
               + log_records(_chunks(held_out_rows[300:320], 10), 4242, prefix="unknown"), 10)

    assert cli.main(_cli(settings, "--json")) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["status"] == "analysed" and result["rows"] == 320
    assert [v["version"] for v in result["versions"]] == [version]
    (unjudged,) = result["not_judged"]
    assert unjudged["version"] == 4242 and unjudged["rows"] == 20
    assert "model version 4242 has no lineage in MLMD" in unjudged["reason"]
    assert "not judged" in captured.err and "4242" in captured.err
    html = Path(result["report"]["html"]).read_text()
    assert "no lineage: not judged" in html and "4242" in html
    # committed: the next run has nothing new (it used to exit 2 on the same window forever)
    assert cli.main(_cli(settings)) == 0
    assert "no new requests" in capsys.readouterr().out


def test_request_log_dir_that_does_not_exist_is_an_error_naming_it(tmp_path, e2e_settings, first_run, capsys):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    missing = tmp_path / "no-such-dir" / "request_logs"
    code = cli.main(_cli(settings, "--set", f"request_log_dir={missing}"))
    assert code == 2
    captured = capsys.readouterr()
    assert str(missing) in captured.err and "request_log_dir" in captured.err
    assert "Traceback" not in captured.err and "no new requests" not in captured.out
    assert not (settings.monitor_path / "state.json").exists()


WRITER = """
import sys
import time
from serving.log_writer import RequestLogger
from tests.conftest import read_rows, SMALL_ROWS
from tests.monitoring.conftest import log_records

rows = read_rows()[SMALL_ROWS:SMALL_ROWS + 100]
logger = RequestLogger(sys.argv[1], rotate_records=1000, rotate_seconds=3600).start()
for record in log_records([rows[i:i + 10] for i in range(0, 100, 10)], int(sys.argv[2]), prefix="orphan"):
    logger.submit(record)
while logger.written < 10:          # handed to the OS, still in the hidden temp file
    time.sleep(0.01)
print("written", flush=True)
sys.stdin.read()
"""


def test_log_of_a_writer_killed_mid_file_is_recovered_and_analysed(tmp_path, e2e_settings, first_run):
    import signal
    import subprocess
    import sys

    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    logs = settings.request_logs_path
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(logs), str(first_run.pushed_version)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.send_signal(signal.SIGKILL)          # the server dies with its file open
        writer.wait()
    assert [p.name for p in logs.iterdir() if p.name.startswith(".")] and not list(logs.glob("requests-*"))
    result = monitor.monitor_once(settings)
    assert result.status == "analysed" and result.rows == 100
    assert not [p.name for p in logs.iterdir() if p.name.startswith(".")]


def _framed(records) -> bytes:
    """``records`` framed as the request-log writer frames them (a shipper or a proxy
    appending whole records writes exactly these bytes)."""
    return b"".join(tfrecord_frame(r.SerializeToString()) for r in records)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def test_records_appended_to_an_analysed_file_are_analysed_once(tmp_path, e2e_settings, first_run,
                                                               held_out_rows):
    """A file that ended on a record boundary when a run read it, and grew afterwards
    (issue 12's 675 records never analysed): each later run reads only what came after."""
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    (path,) = write_logs(settings.request_logs_path,
                         log_records(_chunks(held_out_rows[:100], 10), version, prefix="a"), 100)
    assert monitor.monitor_once(settings).rows == 100

    _append(path, _framed(log_records(_chunks(held_out_rows[100:130], 10), version, prefix="b")))
    second = monitor.monitor_once(settings)
    assert second.status == "analysed" and second.files == [path.name]
    assert second.rows == 30 and second.requests == 3

    # appended again, the last record still being written: none of it yet ...
    more = _framed(log_records(_chunks(held_out_rows[130:180], 10), version, prefix="c"))
    cut = len(more) - 20
    _append(path, more[:cut])
    third = monitor.monitor_once(settings)
    assert third.status == "incomplete" and [f["file"] for f in third.incomplete_files] == [path.name]
    # ... then all of it, once its last record is complete
    _append(path, more[cut:])
    fourth = monitor.monitor_once(settings)
    assert fourth.files == [path.name] and fourth.rows == 50 and fourth.requests == 5
    # a grown copy renamed over it (rsync without --inplace): a new inode, the same bytes first
    copy = tmp_path / "copy"
    copy.write_bytes(path.read_bytes() + _framed(log_records(_chunks(held_out_rows[180:200], 10), version,
                                                             prefix="d")))
    os.replace(copy, path)
    fifth = monitor.monitor_once(settings)
    assert fifth.files == [path.name] and fifth.rows == 20 and fifth.quarantined_files == []
    assert monitor.monitor_once(settings).status == "no_new_requests"
    entry = _state(settings).data["files"][path.name]
    assert (entry["status"], entry["records"], entry["rows"]) == ("analysed", 20, 200)
    assert entry["offset"] == path.stat().st_size


def test_empty_file_is_incomplete_until_written_then_analysed_once(tmp_path, e2e_settings, first_run,
                                                                  held_out_rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    logs = settings.request_logs_path
    (complete,) = write_logs(logs, log_records(_chunks(held_out_rows[:100], 10), version, prefix="a"), 100)
    (shipped,) = write_logs(tmp_path / "elsewhere",
                            log_records(_chunks(held_out_rows[100:200], 10), version, prefix="b"), 100)
    empty = logs / shipped.name
    empty.touch()                                        # a shipper created it, wrote nothing yet

    first = monitor.monitor_once(settings)
    assert first.files == sorted([complete.name, empty.name]) and first.rows == 100
    assert [f["file"] for f in first.incomplete_files] == [empty.name]
    assert "empty" in first.incomplete_files[0]["error"]
    assert empty.name not in _state(settings).data["files"]

    empty.write_bytes(shipped.read_bytes())              # the copy arrives
    second = monitor.monitor_once(settings)
    assert second.files == [empty.name] and second.rows == 100
    assert monitor.monitor_once(settings).status == "no_new_requests"
    assert sum(f["rows"] for f in _state(settings).data["files"].values()) == 200


def test_analysed_file_replaced_by_another_is_quarantined_not_counted_twice(tmp_path, e2e_settings, first_run,
                                                                           held_out_rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    logs = settings.request_logs_path
    shorter, rewritten = write_logs(logs, log_records(_chunks(held_out_rows[:200], 10), version), 10)
    assert monitor.monitor_once(settings).rows == 200

    # replaced by a shorter file (re-shipped from a source that lost its end): a new inode
    data = shorter.read_bytes()
    replacement = tmp_path / "replacement"
    replacement.write_bytes(data[:_record_ends(data)[4]])
    os.replace(replacement, shorter)
    # rewritten in place with other records, longer than what was analysed
    other = _framed(log_records(_chunks(held_out_rows[200:320], 10), version, prefix="other"))
    assert len(other) > rewritten.stat().st_size
    rewritten.write_bytes(other)

    second = monitor.monitor_once(settings)
    assert second.rows == 0 and second.incomplete_files == []
    quarantined = {q["file"]: q for q in second.quarantined_files}
    assert quarantined.keys() == {shorter.name, rewritten.name}
    assert "shrank" in quarantined[shorter.name]["error"]
    assert "differ" in quarantined[rewritten.name]["error"]
    for name, q in quarantined.items():
        assert "analysed before" in q["error"] and "new name" in q["error"]
        assert not (logs / name).exists() and Path(q["moved_to"]).is_file()
    assert monitor.monitor_once(settings).status == "no_new_requests"
    state = _state(settings).data["files"]
    assert {n: (f["status"], f["rows"]) for n, f in state.items()} == {
        shorter.name: ("quarantined", 100), rewritten.name: ("quarantined", 100)}
