"""The audit trail itself (core/audit.py, tfxops audit): the chain, what --verify
finds when an entry is edited, deleted or reordered or the key is wrong, and
appends from several processes at once."""
import json
import multiprocessing
import subprocess
import sys

import pytest

from core import audit, config
from tests.conftest import REPO

KEY_ENV = "TFXOPS_TEST_AUDIT_KEY"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "the right key, long enough")
    return config.load({"home": str(tmp_path), "audit_key_env": KEY_ENV})


def _fill(settings, count=5):
    for n in range(count):
        written = audit.record(settings, audit.PUSHED, f"push number {n}", {"execution_id": 10 + n},
                               model_version=1000 + n)
        assert written.ok, written.error
    return audit.audit_file(settings)


def _tfxops(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tfxops", "audit", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_entries_chain_and_sign(settings):
    path = _fill(settings)
    entries = list(audit.entries(path))
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_hash"] == audit.GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(entries, entries[1:]))
    assert all(e["hash"] == audit.entry_hash(e) for e in entries)
    assert entries[2]["evidence"] == {"execution_id": 12} and entries[2]["model_version"] == "1002"
    assert "@" in entries[0]["actor"] and entries[0]["action"] == "pushed"
    assert "the right key, long enough" not in path.read_text()          # the key is never stored
    result = audit.verify(path, audit.signing_key(settings))
    assert result.ok and result.signatures_checked and result.entries == 5


def _rewrite(path, change):
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("\n".join(lines) + "\n")


def _edit_reason(lines):
    entry = json.loads(lines[2])
    entry["reason"] = "nothing to see here"
    lines[2] = json.dumps(entry)


def _edit_and_rehash(lines):
    entry = json.loads(lines[2])
    entry["reason"] = "nothing to see here"
    entry["hash"] = audit.entry_hash(entry)
    lines[2] = json.dumps(entry)


@pytest.mark.parametrize("change, line, words", [
    (_edit_reason, 3, "entry 3 was edited"),
    (lambda lines: lines.pop(1), 2, "entry 3 comes where entry 2 belongs: entry 2 was deleted"),
    (lambda lines: lines.__setitem__(slice(1, 3), [lines[2], lines[1]]), 2, "reordered"),
    (_edit_and_rehash, 3, "bad signature"),
])
def test_verify_names_the_first_bad_entry(settings, change, line, words):
    path = _fill(settings)
    _rewrite(path, change)
    result = audit.verify(path, audit.signing_key(settings))
    assert not result.ok
    assert result.problem.line == line and words in result.problem.what, result.problem


def test_rehashed_edit_without_key_breaks_the_chain_at_the_next_entry(settings):
    path = _fill(settings)
    _rewrite(path, _edit_and_rehash)
    result = audit.verify(path, None)
    assert result.problem.line == 4 and "does not chain" in result.problem.what


def test_cli_verify_and_print(settings, tmp_path):
    import os

    path = _fill(settings)
    env = dict(os.environ, **{KEY_ENV: "the right key, long enough"})
    good = _tfxops("--home", str(tmp_path), "--set", f"audit_key_env={KEY_ENV}", "--verify", env=env)
    assert good.returncode == 0 and "5 entries, hash chain and signatures intact" in good.stdout, good.stderr
    wrong = _tfxops("--home", str(tmp_path), "--set", f"audit_key_env={KEY_ENV}", "--verify",
                    env=dict(env, **{KEY_ENV: "a wrong key, long enough"}))
    assert wrong.returncode == 1
    assert f"{path}: line 1: entry 1 has a bad signature" in wrong.stderr
    shown = _tfxops("--home", str(tmp_path), "--version", "1003", "--json", env=env)
    assert shown.returncode == 0 and [e["reason"] for e in json.loads(shown.stdout)] == ["push number 3"]
    text = _tfxops("--home", str(tmp_path), "--action", "pushed", "--since", "2000-01-01", env=env)
    assert "5 entries" in text.stdout and "MLMD: execution_id=14" in text.stdout
    missing = _tfxops("--home", str(tmp_path / "elsewhere"), "--verify", env=env)
    assert missing.returncode == 2 and "no audit trail at" in missing.stderr and "Traceback" not in missing.stderr


def test_a_failed_write_is_reported_not_raised(tmp_path):
    (tmp_path / "audit").write_text("a file where the directory should be")
    written = audit.record(config.load({"home": str(tmp_path)}), audit.RUN_STARTED, "a run")
    assert not written.ok and str(tmp_path / "audit" / "audit.jsonl") in written.error
    assert "[Errno" not in written.error and f"File exists: {tmp_path / 'audit'}" in written.error


def _append_many(home, count):
    settings = config.load({"home": home})
    for n in range(count):
        assert audit.record(settings, audit.SERVED_VERSION_CHANGED, f"writer entry {n}").ok


def test_concurrent_writers_keep_one_chain(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(tmp_path), 40)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    path = audit.audit_file(config.load({"home": str(tmp_path)}))
    result = audit.verify(path, None)
    assert result.ok, result.problem
    assert [e["seq"] for e in audit.entries(path)] == list(range(1, 161))


def test_a_torn_last_line_is_a_warning_then_recorded_by_the_next_append(settings, tmp_path):
    import os

    path = _fill(settings, 3)
    with open(path, "ab") as handle:
        handle.write(b'{"action": "pushed", "seq": 4, "rea')          # a writer died mid-append
    result = audit.verify(path, audit.signing_key(settings))
    assert result.ok and [(w.line, "cut short" in w.what) for w in result.warnings] == [(4, True)]
    env = dict(os.environ, **{KEY_ENV: "the right key, long enough"})
    shown = _tfxops("--home", str(tmp_path), "--set", f"audit_key_env={KEY_ENV}", "--verify", env=env)
    assert shown.returncode == 0 and "warning: line 4: the last line is a write cut short" in shown.stdout
    assert audit.record(settings, audit.RUN_STARTED, "after the crash").ok
    note, after = list(audit.entries(path))[3:]
    assert note["action"] == "torn_line" and note["evidence"] == {"line": 4} and note["seq"] == 4
    assert after["seq"] == 5 and after["prev_hash"] == note["hash"]
    result = audit.verify(path, audit.signing_key(settings))
    assert result.ok and not result.warnings and result.entries == 6
    _rewrite(path, lambda lines: lines.__setitem__(3, lines[3].replace("rea", "REA")))   # the torn bytes edited
    result = audit.verify(path, audit.signing_key(settings))
    assert result.problem.line == 4 and "not an audit entry" in result.problem.what


def test_an_unsigned_append_after_signed_entries_is_logged_and_found(settings, monkeypatch, caplog):
    path = _fill(settings, 2)
    monkeypatch.delenv(KEY_ENV)
    with caplog.at_level("ERROR", logger="tfxops.audit"):
        assert audit.record(settings, audit.RUN_STARTED, "a writer without the key").ok
    assert KEY_ENV in caplog.text and "UNSIGNED after signed entries" in caplog.text
    result = audit.verify(path, b"the right key, long enough")
    assert result.problem.line == 3 and "unsigned entry after signed ones" in result.problem.what
    result = audit.verify(path, None)
    assert result.ok and "unsigned after signed ones" in result.warnings[0].what


def _set_field(line_index, field, value, rehash=False):
    def change(lines):
        entry = json.loads(lines[line_index])
        entry[field] = value
        if rehash:
            entry["hash"] = audit.entry_hash(entry)
        lines[line_index] = json.dumps(entry, ensure_ascii=False)
    return change


@pytest.mark.parametrize("field, value", [
    ("seq", [3]), ("time", 5), ("evidence", "execution_id=12"), ("evidence", [1, 2])])
def test_hand_edited_values_are_named_by_line_without_a_traceback(settings, tmp_path, field, value):
    import os

    path = _fill(settings, 4)
    _rewrite(path, _set_field(2, field, value))
    env = dict(os.environ, **{KEY_ENV: "the right key, long enough"})
    home = ["--home", str(tmp_path), "--set", f"audit_key_env={KEY_ENV}"]
    verified = _tfxops(*home, "--verify", env=env)
    assert verified.returncode == 1 and f"{path}: line 3: entry" in verified.stderr
    shown = _tfxops(*home, env=env)
    assert shown.returncode == 1 and f"{path}: line 3: not shown, malformed ({field} is not" in shown.stderr
    assert "3 entries" in shown.stdout
    assert "Traceback" not in verified.stderr + shown.stderr


def test_a_rehashed_malformed_last_entry_fails_verify_and_stops_appends(settings):
    path = _fill(settings, 3)
    _rewrite(path, _set_field(2, "seq", [3], rehash=True))
    result = audit.verify(path, None)
    assert result.problem.line == 3 and "malformed (seq is not an integer)" in result.problem.what
    written = audit.record(settings, audit.RUN_STARTED, "after the edit")
    assert not written.ok and "its last entry has no valid seq and hash" in written.error


def test_a_non_ascii_signature_is_a_bad_signature(settings):
    path = _fill(settings, 3)
    _rewrite(path, _set_field(1, "signature", "é" * 64))
    result = audit.verify(path, audit.signing_key(settings))
    assert result.problem.line == 2 and "bad signature" in result.problem.what


def test_cli_since_with_z_and_verify_refuses_filters(settings, tmp_path):
    import os

    _fill(settings, 2)
    env = dict(os.environ, **{KEY_ENV: "the right key, long enough"})
    since = _tfxops("--home", str(tmp_path), "--since", "2000-01-01T20:00Z", "--json", env=env)
    assert since.returncode == 0 and len(json.loads(since.stdout)) == 2, since.stderr
    future = _tfxops("--home", str(tmp_path), "--since", "2999-01-01T00:00Z", "--json", env=env)
    assert future.returncode == 0 and json.loads(future.stdout) == []
    refused = _tfxops("--home", str(tmp_path), "--verify", "--version", "1000", env=env)
    assert refused.returncode == 2 and "--verify checks the whole file and takes no filters: drop --version" \
        in refused.stderr


def test_readers_wait_for_a_writer_lock(settings):
    import fcntl
    import threading

    path = _fill(settings, 2)
    done = []
    with open(path, "ab") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        reader = threading.Thread(target=lambda: done.append(audit.verify(path, None)))
        reader.start()
        reader.join(0.5)
        assert not done                         # blocked while the writer holds the lock
        fcntl.flock(writer.fileno(), fcntl.LOCK_UN)
    reader.join(10)
    assert done and done[0].ok
