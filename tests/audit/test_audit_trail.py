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
    monkeypatch.setenv(KEY_ENV, "the right key")
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
    assert "the right key" not in path.read_text()          # the key is never stored
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
    env = dict(os.environ, **{KEY_ENV: "the right key"})
    good = _tfxops("--home", str(tmp_path), "--set", f"audit_key_env={KEY_ENV}", "--verify", env=env)
    assert good.returncode == 0 and "5 entries, chain and signatures intact" in good.stdout, good.stderr
    wrong = _tfxops("--home", str(tmp_path), "--set", f"audit_key_env={KEY_ENV}", "--verify",
                    env=dict(env, **{KEY_ENV: "a wrong key"}))
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
