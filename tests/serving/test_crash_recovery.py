"""``kill -9`` of ``tfxops serve``: every request the server counted as logged
(``tfxops_serving_request_log_records_total``) is in a closed, non-hidden log file
after a restart; a torn last record is dropped and the rest kept; the open file
of a live writer is never touched by a recovery."""
from core import request_log
from serving import client, log_writer, metrics as M
from tests.serving.conftest import copy_version, serving_settings
from tests.serving.serve_proc import ServeProcess, hidden_files, logged_ids


def _settings(tmp_path, pushed_model):
    # one open log file for the whole test: nothing is closed by rotation
    settings = serving_settings(tmp_path, log_rotate_records=100_000, log_rotate_seconds=3600)
    copy_version(pushed_model, settings.model_push_dir, 4)
    return settings


def _send(settings, rows, prefix: str, n: int) -> list:
    """``n`` requests over REST and ``n`` over gRPC, ids ``<prefix>-rest-i`` / ``-grpc-i``."""
    sent = []
    for protocol, port in (("rest", settings.rest_port), ("grpc", settings.grpc_port)):
        c = client.make_client(protocol, "127.0.0.1", port, "taxi")
        try:
            for i in range(n):
                rid = f"{prefix}-{protocol}-{i}"
                assert len(c.predict_rows([rows[i % len(rows)]], request_id=rid)) == 1
                sent.append(rid)
        finally:
            c.close()
    return sent


def _counted_then_killed(server, sent) -> None:
    """Wait until the server counts every sent request as logged, then kill -9."""
    assert server.wait_counter(M.LOGGED, len(sent)) == len(sent)
    logs = server.settings.request_logs_path
    assert request_log.closed_log_files(logs) == [] and len(hidden_files(logs)) == 1
    server.kill()


def test_kill9_then_restart_recovers_every_counted_request(tmp_path, pushed_model, rows):
    settings = _settings(tmp_path, pushed_model)
    with ServeProcess(settings, tmp_path) as server:
        sent = _send(settings, rows, "first", 15)
        _counted_then_killed(server, sent)
    with ServeProcess(settings, tmp_path) as server:       # recovers on start
        assert sorted(logged_ids(settings.request_logs_path)) == sorted(sent)
        assert hidden_files(settings.request_logs_path) == []
        more = _send(settings, rows, "second", 3)
        assert server.terminate() == 0
    assert sorted(logged_ids(settings.request_logs_path)) == sorted(sent + more)


def test_torn_last_record_is_dropped_and_every_complete_one_kept(tmp_path, pushed_model, rows):
    settings = _settings(tmp_path, pushed_model)
    logs = settings.request_logs_path
    with ServeProcess(settings, tmp_path) as server:
        sent = _send(settings, rows, "torn", 10)
        _counted_then_killed(server, sent)
    (name,) = hidden_files(logs)
    data = (logs / name).read_bytes()
    records, end = request_log.complete_records(data)
    assert (records, end) == (len(sent), len(data))
    (logs / name).write_bytes(data[:-7])                   # the last record torn mid-way
    with ServeProcess(settings, tmp_path) as server:
        assert server.terminate() == 0
    said = server.log()
    assert f" {len(sent) - 1} records kept" in said and "torn record dropped" in said
    kept = logged_ids(logs)
    assert len(kept) == len(sent) - 1 and set(kept) < set(sent)
    assert hidden_files(logs) == []
    assert request_log.closed_log_files(logs) == [logs / name[1:-len(request_log.TMP_SUFFIX)]]


def test_live_writers_temp_file_is_left_alone(tmp_path, pushed_model, rows):
    settings = _settings(tmp_path, pushed_model)
    logs = settings.request_logs_path
    with ServeProcess(settings, tmp_path) as server:
        sent = _send(settings, rows, "live", 5)
        assert server.wait_counter(M.LOGGED, len(sent)) == len(sent)
        (open_file,) = hidden_files(logs)
        before = (logs / open_file).read_bytes()
        assert log_writer.recover_orphans(logs) == []     # another process: the test's
        other = log_writer.RequestLogger(logs).start()     # a second writer on the directory
        other.close()
        assert hidden_files(logs) == [open_file]
        assert (logs / open_file).read_bytes() == before
        sent += _send(settings, rows, "after", 5)          # the live writer carries on
        assert server.terminate() == 0
    assert sorted(logged_ids(logs)) == sorted(sent)
    assert len(request_log.closed_log_files(logs)) == 1 and hidden_files(logs) == []


def test_orphans_that_cannot_be_recovered_are_named_and_skipped(tmp_path, pushed_model, rows):
    """Before: one unreadable or unrenamable temp file made ``tfxops serve`` exit 1."""
    settings = _settings(tmp_path, pushed_model)
    logs = settings.request_logs_path
    with ServeProcess(settings, tmp_path) as server:
        sent = _send(settings, rows, "first", 5)
        _counted_then_killed(server, sent)
    (orphan,) = hidden_files(logs)
    final = logs / orphan[1:-len(request_log.TMP_SUFFIX)]
    (final / "in-the-way").mkdir(parents=True)             # its name taken: rename fails
    not_a_file = logs / ".requests-20260101T000000Z-1-0.tfrecord.tmp"
    not_a_file.mkdir()                                     # opening it fails
    with ServeProcess(settings, tmp_path) as server:       # starts, serves, says what it skipped
        more = _send(settings, rows, "second", 3)
        assert server.terminate() == 0
    said = server.log()
    assert f"cannot recover {logs / orphan}" in said and f"cannot recover {not_a_file}" in said
    assert f"with the name {final.name} free" in said
    files = [p for p in request_log.closed_log_files(logs) if p.is_file()]   # not `final`
    assert sorted(r.request_id for r in request_log.read_request_log(files)) == sorted(more)
    (final / "in-the-way").rmdir()
    final.rmdir()                                          # the fix the error names
    with ServeProcess(settings, tmp_path) as server:       # recovers it on start
        assert server.terminate() == 0
    assert sorted(logged_ids(logs)) == sorted(sent + more)
