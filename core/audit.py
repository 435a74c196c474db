"""The audit trail: every state change of tfxops, appended to one JSON-lines file
(``audit_path``, default ``<home>/audit/audit.jsonl``), tamper-evident.

Each line is one entry: ``seq`` (1, 2, ...), ``time`` (UTC), ``actor`` (user@host,
prefixed by the role when a component acts on its own: ``monitor:``, ``server:``),
``action`` (one of ``ACTIONS``), ``reason`` in words, ``model_version``,
``evidence`` (MLMD ids, by what they are), ``prev_hash`` (the previous entry's
``hash``; ``GENESIS`` for the first), ``hash`` (SHA-256 of the entry's canonical
JSON without ``hash`` and ``signature``) and, when the environment variable that
``audit_key_env`` names holds a key, ``signature`` (HMAC-SHA256 of the same bytes
under that key). The key is never written anywhere.

Writers are the pipeline run, the monitor and the server, possibly at once: an
append takes an exclusive ``flock`` on the file, reads the last entry, writes the
new line and fsyncs, all under the lock, so the chain never forks.

A writer that dies mid-append leaves a torn last line (no newline). The next
append starts on a fresh line and first chains a ``torn_line`` entry naming that
line and the SHA-256 of its bytes, so ``verify`` accepts the torn line (and only
that one, unchanged); a torn LAST line, with nothing after it yet, is a warning
of ``verify``, not a break. A writer without the key appending after signed
entries logs at ERROR level naming the environment variable; ``verify`` with the
key reports that unsigned entry.

Readers take a shared ``flock`` while they read, so they never see half a line.

``record`` never raises: a failed write is logged at ERROR level and returned as
a ``Written`` whose ``error`` says what happened; the action it records stands
(``tfxops run`` then exits non-zero at the end, naming the file).

``verify`` walks the chain and names the first bad line: edited (its hash no
longer matches), deleted or reordered (its ``seq`` and ``prev_hash`` do not follow
the line before), a bad or missing signature (with the key), or not an entry at
all, or an entry whose fields are not of their types (hand-edited). What a chain
cannot show: a cut at the very end (the last entries removed) leaves a valid,
shorter chain, undetectable from the file alone; compare ``seq`` and the last
``hash`` with a copy of the head kept elsewhere. And set a key, without which a
person able to rewrite the file can also rewrite every hash after an edit.
"""
import dataclasses
import datetime
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import os
import socket
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from core import pushdir, storage
from core.config import Settings, require_local
from core.secrets import SecretError, key_from_env

log = logging.getLogger("tfxops.audit")

# The vocabulary of actions.
RUN_STARTED, RUN_ENDED = "run_started", "run_ended"
GATE_STOPPED, BLESSING_REFUSED, PUSHED = "gate_stopped", "blessing_refused", "pushed"
MONITOR_DECISION, RETRAIN, REPUSH = "monitor_decision", "retrain", "repush"
PROMOTE, ROLLBACK = "promote", "rollback"      # no command does these yet
SERVED_VERSION_CHANGED = "served_version_changed"
TORN_LINE = "torn_line"     # the line before it is a write cut short (the appender notes it)
MODEL_REFUSED = "model_refused"    # a version the server would not load: it failed its integrity check
SERVED_CONFIG_CHANGED = "served_config_changed"   # the served model list, policies or labels (serving/model_config.py)
SERVED_CONFIG_REFUSED = "served_config_refused"   # a HandleReloadConfigRequest refused (reload_config_clients)
# a span of labelled requests held back from a retrain (monitoring.poisoning), then released or discarded
RETRAIN_HELD, RETRAIN_APPROVED, RETRAIN_REJECTED = "retrain_held", "retrain_approved", "retrain_rejected"
ACTIONS = (RUN_STARTED, RUN_ENDED, GATE_STOPPED, BLESSING_REFUSED, PUSHED, MONITOR_DECISION,
           RETRAIN, REPUSH, PROMOTE, ROLLBACK, SERVED_VERSION_CHANGED, TORN_LINE,
           RETRAIN_HELD, RETRAIN_APPROVED, RETRAIN_REJECTED, MODEL_REFUSED, SERVED_CONFIG_CHANGED,
           SERVED_CONFIG_REFUSED)

GENESIS = "0" * 64          # prev_hash of the first entry
_UNSIGNED = ("hash", "signature")


class AuditError(RuntimeError):
    """The audit file cannot be read (missing, unreadable); the message names it."""


@dataclasses.dataclass(frozen=True)
class Written:
    """What ``record`` did: the entry appended, or why not (already logged)."""
    path: str
    entry: Optional[Dict] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True)
class Problem:
    line: int                # 1-based line of the file
    what: str                # in words


@dataclasses.dataclass(frozen=True)
class TornLine:
    line: int        # 1-based line number
    sha256: str      # of its bytes


@dataclasses.dataclass(frozen=True)
class Verification:
    path: str
    entries: int             # lines read
    signatures_checked: bool
    problem: Optional[Problem] = None
    warnings: List[Problem] = dataclasses.field(default_factory=list)   # not breaks: e.g. a torn last line

    @property
    def ok(self) -> bool:
        return self.problem is None


# ------------------------------------------------------------------ where, who, key
def audit_file(settings: Settings) -> Path:
    """The audit file of these settings (local: it is locked while appending)."""
    path = storage.location(settings.audit_path) if settings.audit_path else \
        storage.join(settings.home, "audit", "audit.jsonl")
    return require_local("audit_path", path, "appends to the audit trail lock the file")


def actor_name(role: Optional[str] = None) -> str:
    """``user@host``, or ``<role>:user@host`` for a component acting on its own."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    who = f"{user}@{socket.gethostname()}"
    return f"{role}:{who}" if role else who


def signing_key(settings: Settings) -> Optional[bytes]:
    """The HMAC key from the environment variable ``audit_key_env`` names; None if unset;
    ``AuditError`` naming the variable if it is too short (``core.secrets``)."""
    try:
        return key_from_env(settings.audit_key_env, "the audit trail's HMAC key, setting audit_key_env")
    except SecretError as exc:
        raise AuditError(str(exc)) from None


# ------------------------------------------------------------------ hashing
def canonical(entry: Dict) -> bytes:
    """The bytes hashed and signed: the entry without ``hash`` and ``signature``, as
    JSON with sorted keys and no spaces."""
    body = {k: v for k, v in entry.items() if k not in _UNSIGNED}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: Dict) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def signature(entry: Dict, key: bytes) -> str:
    return hmac.new(key, canonical(entry), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------ appending
def record(settings: Settings, action: str, reason: str, evidence: Optional[Dict[str, int]] = None,
           model_version=None, actor: Optional[str] = None) -> Written:
    """Append one entry. Never raises: a failure is logged and returned."""
    where = ""
    try:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        path = audit_file(settings)
        where = str(path)
        entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
                 "actor": actor or actor_name(), "action": action, "reason": reason,
                 "model_version": None if model_version is None else str(model_version),
                 "evidence": {k: int(v) for k, v in (evidence or {}).items() if v is not None}}
        return Written(where, _append(path, entry, signing_key(settings), settings.audit_key_env))
    except Exception as exc:  # noqa: BLE001 - the action this records must stand
        where = where or str(settings.audit_path or "<home>/audit/audit.jsonl")
        message = f"could not append '{action}' to the audit trail {where}: {_why(exc)}"
        log.error("AUDIT TRAIL NOT WRITTEN: %s (reason: %s; evidence: %s)", message, reason, evidence)
        return Written(where, None, message)


def _why(exc: Exception) -> str:
    """An append's failure in words (an OS error as its reason and file)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, (AuditError, ValueError)):
        return str(exc)
    return f"unexpected {type(exc).__name__}"


def _append(path: Path, entry: Dict, key: Optional[bytes], key_env: str) -> Dict:
    """Chain ``entry`` to the file's last entry and append it, under an exclusive lock
    (after a ``torn_line`` note if the file ends in a torn line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            last, torn = _last_entry(handle)
            if last is not None and "signature" in last and key is None:
                log.error("audit entry %s appended UNSIGNED after signed entries: the environment variable %s "
                          "(setting audit_key_env) is not set in this process", last["seq"] + 1,
                          key_env or "(audit_key_env is empty)")
            lines = []
            if torn is not None:
                last = _chained(_torn_note(torn), last, key)
                lines.append(last)
            lines.append(_chained(entry, last, key))
            text = "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in lines)
            handle.write((b"\n" if torn is not None else b"") + text.encode())
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    if created:
        _fsync_directory(path.parent)
    return lines[-1]


def _chained(entry: Dict, last: Optional[Dict], key: Optional[bytes]) -> Dict:
    """``entry`` with its ``seq``, ``prev_hash``, ``hash`` (and ``signature``) after ``last``."""
    entry = dict(entry, seq=(last or {}).get("seq", 0) + 1, prev_hash=(last or {}).get("hash", GENESIS))
    entry["hash"] = entry_hash(entry)
    if key is not None:
        entry["signature"] = signature(entry, key)
    return entry


def _torn_note(torn: TornLine) -> Dict:
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "actor": actor_name(), "action": TORN_LINE, "model_version": None,
            "reason": f"line {torn.line} is a write cut short (not an entry); its bytes' sha256 is {torn.sha256}",
            "evidence": {"line": torn.line}}


def _torn_line_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _last_entry(handle) -> Tuple[Optional[Dict], Optional[TornLine]]:
    """The last complete entry of the file (None if none) and, if the file ends in a
    torn line (a writer died mid-write), that line. ``AuditError`` if the last
    entry was edited into something that cannot be chained to."""
    last, torn = _last_parsed(handle)
    if last is not None and not (_is_int(last.get("seq")) and isinstance(last.get("hash"), str)):
        raise AuditError("its last entry has no valid seq and hash (edited by hand?): "
                         "`tfxops audit --verify` names the line")
    if not torn:
        return last, None
    handle.seek(0)
    content = handle.read()
    start = content.rfind(b"\n") + 1
    return last, TornLine(content.count(b"\n") + 1, _torn_line_hash(content[start:]))


def _last_parsed(handle) -> Tuple[Optional[Dict], bool]:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    if size == 0:
        return None, False
    handle.seek(size - 1)
    torn = handle.read(1) != b"\n"
    chunk = 4096
    while True:
        start = max(0, size - chunk)
        handle.seek(start)
        lines = handle.read(size - start).split(b"\n")
        complete = lines if start == 0 else lines[1:]     # the first may start mid-line
        for raw in reversed(complete):
            found = _parse(raw)
            if found is not None:
                return found, torn
        if start == 0:
            return None, torn
        chunk *= 4


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ------------------------------------------------------------------ reading
def read_lines(path: Path) -> List[bytes]:
    """The file's lines (bytes, without their newline), read under a shared lock so
    that no half-written line is seen; ``AuditError`` naming the file if it cannot be
    read."""
    lines = _read(path).split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            try:
                content = handle.read()
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        raise AuditError(f"no audit trail at {path}: nothing has been recorded under this home yet "
                         f"(or set audit_path to where it is)") from None
    except OSError as exc:
        raise AuditError(f"cannot read the audit trail {path}: {exc.strerror}") from None
    return content


def numbered_entries(path: Path) -> Iterator[Tuple[int, Dict]]:
    """Every line that parses as an entry, with its 1-based line number, in file order."""
    for number, line in enumerate(read_lines(path), start=1):
        found = _parse(line)
        if found is not None:
            yield number, found


def entries(path: Path) -> Iterator[Dict]:
    """Every line that parses as an entry, in file order."""
    return (entry for _, entry in numbered_entries(path))


def malformed(entry: Dict) -> str:
    """Which field of a parsed entry is not of its type (a hand edit); "" if none."""
    types = {"seq": "an integer", "time": "an ISO time", "actor": "a string", "action": "a known action",
             "reason": "a string", "evidence": "an object of integers", "prev_hash": "a string"}
    checks = {"seq": _is_int(entry.get("seq")), "time": _is_time(entry.get("time")),
              "actor": isinstance(entry.get("actor"), str), "action": entry.get("action") in ACTIONS,
              "reason": isinstance(entry.get("reason"), str),
              "evidence": isinstance(entry.get("evidence"), dict)
              and all(_is_int(v) for v in entry["evidence"].values()),
              "prev_hash": isinstance(entry.get("prev_hash"), str)}
    bad = [f"{field} is not {types[field]}" for field, ok in checks.items() if not ok]
    if entry.get("model_version") is not None and not isinstance(entry.get("model_version"), str):
        bad.append("model_version is not a string")
    return "; ".join(bad)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value) -> bool:
    try:
        return isinstance(value, str) and bool(datetime.datetime.fromisoformat(value))
    except ValueError:
        return False


# ------------------------------------------------------------------ verifying
def verify(path: Path, key: Optional[bytes]) -> Verification:
    """Walk the chain; the first bad line, if any, and the warnings (see the module
    docstring)."""
    content = _read(path)
    lines = content.split(b"\n")
    lines = lines[:-1] if lines[-1] == b"" else lines
    torn_last = bool(content) and not content.endswith(b"\n")
    parsed = [_parse(line) for line in lines]
    last_line_of = {e["seq"]: number for number, e in enumerate(parsed, start=1) if e and _is_int(e.get("seq"))}
    previous, signed, warnings = {"seq": 0, "hash": GENESIS}, False, []
    for number, entry in enumerate(parsed, start=1):
        if entry is None and _torn_line_accepted(lines, parsed, number, torn_last, warnings):
            continue
        what = _line_problem(entry, previous, last_line_of.get(previous["seq"] + 1, 0) > number, key) or \
            _signing_problem(entry, signed, key, number, warnings)
        if what:
            return Verification(str(path), len(lines), key is not None, Problem(number, what), warnings)
        previous, signed = entry, signed or "signature" in entry
    return Verification(str(path), len(lines), key is not None, None, warnings)


def _torn_line_accepted(lines: List[bytes], parsed: List[Optional[Dict]], number: int, torn_last: bool,
                        warnings: List[Problem]) -> bool:
    """A line that is no entry is accepted when it is the torn last line (no newline
    after it: a warning) or the line the next line's ``torn_line`` note names, with
    the same bytes."""
    if number == len(lines):
        if not torn_last:
            return False
        warnings.append(Problem(number, "the last line is a write cut short (a writer died mid-append); "
                                        "the next append records it"))
        return True
    note = parsed[number]      # the line after it
    return bool(note and note.get("action") == TORN_LINE and note.get("evidence") == {"line": number}
                and isinstance(note.get("reason"), str)
                and note["reason"].endswith(_torn_line_hash(lines[number - 1])))


def _signing_problem(entry: Dict, signed_before: bool, key: Optional[bytes], number: int,
                     warnings: List[Problem]) -> str:
    """An unsigned entry: with the key a break, without it a warning if signed ones
    came before it."""
    if "signature" in entry:
        return ""
    if key is not None:
        return f"entry {entry['seq']} " + ("is an unsigned entry after signed ones (appended without the key)"
                                          if signed_before else "is not signed (written without the key)")
    if not signed_before:
        return ""
    warnings.append(Problem(number, f"entry {entry['seq']} is unsigned after signed ones (give the key to check)"))
    return ""


def _parse(line) -> Optional[Dict]:
    """An entry from a line (str or bytes); None if the line is not one."""
    try:
        found = json.loads(line)
    except ValueError:
        return None
    return found if isinstance(found, dict) and "hash" in found else None


def _line_problem(entry: Optional[Dict], previous: Dict, expected_comes_later: bool,
                  key: Optional[bytes]) -> str:
    """What is wrong with one entry given the one before it (and whether the entry
    expected here is further down the file); "" if nothing."""
    if entry is None:
        return "not an audit entry (edited, or a write was cut short)"
    seq, expected = entry.get("seq"), previous["seq"] + 1
    if entry_hash(entry) != entry.get("hash"):
        return f"entry {seq} was edited: its content no longer matches its hash"
    if malformed(entry):
        return f"entry {seq} is malformed ({malformed(entry)}): edited and re-hashed"
    if seq > expected:
        if expected_comes_later:
            return f"entry {seq} comes where entry {expected} belongs: the entries were reordered"
        missing = f"entry {expected} was" if seq == expected + 1 else f"entries {expected}-{seq - 1} were"
        return f"entry {seq} comes where entry {expected} belongs: {missing} deleted"
    if seq != expected:
        return f"entry {seq} comes after entry {previous['seq']}: the entries were reordered or duplicated"
    if entry.get("prev_hash") != previous["hash"]:
        return (f"entry {seq} does not chain to the line before it (its prev_hash is not that entry's hash): "
                f"an entry was edited and re-hashed, or replaced")
    if key is not None and "signature" in entry:
        if not hmac.compare_digest(str(entry["signature"]).encode(), signature(entry, key).encode()):
            return f"entry {seq} has a bad signature (a different key, or edited and re-hashed)"
    return ""


# ------------------------------------------------------------------ evidence
def version_evidence(push_directory, version) -> Dict[str, int]:
    """The MLMD ids a pushed version's push marker names (``core.pushdir``): the
    Model and the execution that pushed it; {} for a version without a marker."""
    marker = pushdir.read_marker(storage.join(push_directory, str(version))) or {}
    ids = {"model_artifact_id": marker.get("model_artifact_id"), "pusher_execution_id": marker.get("execution_id")}
    return {k: int(v) for k, v in ids.items() if isinstance(v, int) or (isinstance(v, str) and v.isdigit())}
