"""Log files a run could not read: still being written (retried), or corrupt or
replaced (quarantined).

The server's own writer renames a file into place only once it is closed, so a
file it wrote is complete. Files that arrive otherwise (a log shipper, ``cp``,
``rsync --inplace``, a proxy on another host) can be seen half-written, and may
grow after a run read them (``monitoring.window`` reads an analysed file on from
the offset its analysed records end at). A run tells the cases apart by the
framing of the part it reads (``core.request_log.scan_frames``), whether the
file still holds what was analysed, and the file's age:

* **incomplete**: the file is empty, or the framing of the part ends in a record
  cut short, or in a last record whose checksum fails with nothing after it (zeros,
  a torn write), and the file changed less than ``monitor_incomplete_grace_seconds``
  ago (its mtime); or it could not be read at all (an ``OSError``). Nothing of the
  part is counted; the checkpoint keeps the file's offset where it was, so the next
  run reads the part again, whole once it is complete.
* **corrupt**: a checksum fails with more data after it (corruption in the
  middle: no writer appends there), a record that is not a PredictionLog, or a
  truncated tail (or an empty file) that has not changed for the grace period (a
  writer that died).
* **replaced**: an analysed file that is now smaller than the offset analysed up
  to, or whose analysed bytes differ (another file under its name, a rewrite in
  place). Its records cannot be told from those already counted, so none is.

Corrupt and replaced files are quarantined: moved to ``<monitor_dir>/quarantine/<name>``
when the monitor may rename in the log directory (same filesystem), else left in
place; either way the checkpoint marks them ``quarantined`` with the reason (keeping
what was analysed of a replaced file before), and no later run reads them again. A
replaced file holding new requests is analysed once put back in the log directory
under a new name.
"""
import dataclasses
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

from monitoring.window import CorruptLogError, ReplacedLogError, TruncatedLogError

QUARANTINE_DIR = "quarantine"


@dataclasses.dataclass
class Unreadable:
    """A file of the window that could not be read whole."""
    file: str
    error: str
    kind: str              # "truncated" | "corrupt" | "replaced" | "io"

    @classmethod
    def of(cls, name: str, exc: Exception) -> "Unreadable":
        if isinstance(exc, TruncatedLogError):
            return cls(name, str(exc), "truncated")
        if isinstance(exc, ReplacedLogError):
            return cls(name, str(exc), "replaced")
        if isinstance(exc, CorruptLogError):
            return cls(name, str(exc), "corrupt")
        return cls(name, f"cannot read the file: {exc.strerror or exc}", "io")


@dataclasses.dataclass
class Triage:
    incomplete: List[Dict]          # {"file", "error", "age_seconds"}: retried by the next run
    quarantined: List[Dict]         # {"file", "error", "moved_to"}: never read again

    def file_results(self) -> Dict[str, Dict]:
        """What the checkpoint records for these files (incomplete ones: nothing)."""
        return {q["file"]: {"status": "quarantined", "error": q["error"], "moved_to": q["moved_to"]}
                for q in self.quarantined}


def triage(unreadable: List[Unreadable], log_dir: Path, monitor_dir: Path, grace_seconds: float,
           move: bool = True, now: Optional[float] = None) -> Triage:
    """Sort the unreadable files into incomplete and quarantined (moved aside unless
    ``move`` is false: a dry run changes nothing)."""
    now = time.time() if now is None else now
    incomplete, quarantined = [], []
    for item in sorted(unreadable, key=lambda u: u.file):
        path = Path(log_dir) / item.file
        age = _age(path, now)
        if item.kind == "io" or (item.kind == "truncated" and (age is None or age < grace_seconds)):
            incomplete.append({"file": item.file, "error": item.error,
                               "age_seconds": None if age is None else round(age, 1)})
            continue
        quarantined.append({"file": item.file, "error": _why(item, age, grace_seconds),
                            "moved_to": _quarantine(path, Path(monitor_dir) / QUARANTINE_DIR) if move else None})
    return Triage(incomplete, quarantined)


def _why(item: Unreadable, age: Optional[float], grace_seconds: float) -> str:
    """Why ``item`` is quarantined, and for a replaced file what to do."""
    if item.kind == "truncated":
        return (f"{item.error}; unchanged for {age:.0f} s, longer than monitor_incomplete_grace_seconds="
                f"{grace_seconds:g}: its writer is gone")
    if item.kind == "replaced":
        return (f"{item.error}: its records cannot be told from those already counted, so none is; if it "
                f"holds new requests, put it in the log directory under a new name (requests-*.tfrecord) to have "
                f"it analysed")
    return item.error


def _age(path: Path, now: float) -> Optional[float]:
    """Seconds since the file last changed (0 for a time in the future: clock skew)."""
    try:
        return max(0.0, now - path.stat().st_mtime)
    except OSError:
        return None


def _quarantine(path: Path, directory: Path) -> Optional[str]:
    """Move ``path`` into ``directory``; its new path, or None when it stays in place."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / path.name
        if target.exists():                 # a name seen before: keep both
            target = directory / f"{path.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.replace(path, target)            # same filesystem only: never a half copy
        return str(target)
    except OSError:
        return None
