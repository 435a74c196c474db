"""Spans of labelled requests held back from a retrain (``monitoring.poisoning``),
waiting for a person: ``tfxops approve WINDOW`` releases one, ``--reject`` discards it.

    <monitor_dir>/spans/pending/span-<window>.csv    the held span: not in the retrain data
    <monitor_dir>/spans/pending/span-<window>.json   the hold: why, when, the version it judged
    <monitor_dir>/spans/decided/span-<window>.json   the hold once approved (the CSV has joined
                                                     spans/) or rejected (the CSV is deleted):
                                                     by whom, when

Callers hold the monitor lock (``monitoring.lock``) while they change these.
"""
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
WINDOW_ID = re.compile(r"[A-Za-z0-9_.-]+")     # the characters of the monitor's window ids


class ApprovalError(RuntimeError):
    """A window that cannot be approved or rejected; the message names it and the fix."""


@dataclasses.dataclass
class Hold:
    """One held span and what became of it."""
    window: str
    span: str                          # the CSV (in pending/ while held)
    rows: int
    reasons: List[str]                 # why it was held, in plain words
    held_at: float
    judged_version: Optional[str]      # the served version whose window it is
    review: Dict                       # ``poisoning.SpanReview.to_dict()``
    state: str = PENDING
    decided_by: str = ""
    decided_at: Optional[float] = None

    def line(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.held_at))
        return f"window {self.window}: {self.rows} rows held since {when}: " + "; ".join(self.reasons)

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def pending_dir(monitor_dir: Path) -> Path:
    return monitor_dir / "spans" / "pending"


def span_name(window_id: str) -> str:
    return f"span-{window_id}.csv"


def hold(monitor_dir: Path, window_id: str, span: Path, reasons: List[str], review: Dict,
         judged_version) -> Hold:
    """Record the hold of ``span`` (a CSV already in ``pending_dir``)."""
    entry = Hold(window=window_id, span=str(span), rows=int(review.get("rows", 0)), reasons=list(reasons),
                 held_at=time.time(), judged_version=None if judged_version is None else str(judged_version),
                 review=review)
    _write(pending_dir(monitor_dir) / f"span-{window_id}.json", entry)
    return entry


def held(monitor_dir: Path) -> List[Hold]:
    """Every span waiting for approval, oldest first."""
    found = [_read(path) for path in pending_dir(monitor_dir).glob("span-*.json")]
    return sorted(found, key=lambda entry: entry.held_at)


def approve(monitor_dir: Path, window_id: str, approver: str) -> Hold:
    """Move the window's span into the training spans; the hold, decided."""
    entry = pending(monitor_dir, window_id)
    target = monitor_dir / "spans" / span_name(window_id)
    try:
        os.replace(entry.span, target)
    except OSError as exc:
        raise ApprovalError(f"window {window_id}: its span {entry.span} cannot be moved to {target} "
                            f"({exc.strerror}): make {target.parent} writable by you and {target} free (not a "
                            f"directory), on the file system of {pending_dir(monitor_dir)}; then approve again "
                            f"(the span still waits)") from None
    return _decide(monitor_dir, entry, APPROVED, approver, str(target))


def reject(monitor_dir: Path, window_id: str, rejecter: str) -> Hold:
    """Discard the window's span; the hold, decided."""
    entry = pending(monitor_dir, window_id)
    Path(entry.span).unlink(missing_ok=True)
    return _decide(monitor_dir, entry, REJECTED, rejecter, entry.span)


def pending(monitor_dir: Path, window_id: str) -> Hold:
    """The window's hold; ``ApprovalError`` naming the window and the fix when it has none."""
    if not WINDOW_ID.fullmatch(window_id):
        raise ApprovalError(f"{window_id!r} is not a window id: the monitor's have only letters, digits, '_', '.' "
                            f"and '-' (no path separators): see `tfxops approve --list`")
    path = pending_dir(monitor_dir) / f"span-{window_id}.json"
    if path.is_file():
        return _read(path)
    decided = _decided_path(monitor_dir, window_id)
    if decided.is_file():
        entry = _read(decided)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.decided_at or 0))
        raise ApprovalError(f"window {window_id} was already {entry.state} by {entry.decided_by} at {when}"
                            + (": its span is among the training spans; nothing to do" if entry.state == APPROVED
                               else ": its span was discarded; nothing to do"))
    waiting = ", ".join(entry.window for entry in held(monitor_dir)) or "none"
    raise ApprovalError(f"window {window_id} has no span waiting for approval in {pending_dir(monitor_dir)} "
                        f"(waiting: {waiting}): check the window id with `tfxops approve --list`")


def _decide(monitor_dir: Path, entry: Hold, state: str, who: str, span: str) -> Hold:
    decided = dataclasses.replace(entry, state=state, decided_by=who, decided_at=time.time(), span=span)
    _write(_decided_path(monitor_dir, entry.window), decided)
    (pending_dir(monitor_dir) / f"span-{entry.window}.json").unlink()
    return decided


def _decided_path(monitor_dir: Path, window_id: str) -> Path:
    return monitor_dir / "spans" / "decided" / f"span-{window_id}.json"


def _write(path: Path, entry: Hold) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(entry.to_dict(), indent=2, default=str))
    os.replace(tmp, path)


def _read(path: Path) -> Hold:
    return Hold(**json.loads(path.read_text()))
