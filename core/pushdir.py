"""Publishing a model version into a serving directory, whole or not at all, and
finding what a killed publisher left there. Filesystem only (no TFX, no MLMD), so
monitoring, lineage and the server can import it.

``publish_atomically`` makes ``<base>/.incoming-<version>-<pid>``, writes a push
marker (``MARKER``) into it first, copies the model beside it, then renames the
whole directory to ``<base>/<version>`` in one ``os.rename``. The marker stays
inside the version: who pushed it (pid, host, process start time) and, when the
caller says, which pipeline run, Pusher execution and model. A server ignores the
extra file; ``pipeline/recovery.py`` reads it to match a version that has no MLMD
record to the execution that pushed it.

A ``kill -9`` leaves at most one of two things behind (``pipeline/recovery.py``
deals with both): a staging directory, during the copy (never visible to a
server: hidden, not numeric); or a whole version without its MLMD record, between
the rename and the caller's record.
"""
import datetime
import json
import os
import re
import shutil
import socket
import time
from typing import Dict, List, Optional, Tuple

from core.owner import DEAD, Owner

INCOMING_PREFIX = ".incoming-"          # staging: .incoming-<version>-<pid>
ORPHANED_PREFIX = ".orphaned-"          # a version moved aside: .orphaned-<version>
MARKER = ".tfxops-push.json"            # inside each version tfxops pushed
_STAGING_NAME = re.compile(re.escape(INCOMING_PREFIX) + r"\d+-(\d+)")


def is_version_name(name: str) -> bool:
    """Whether a directory name is a model version (what servers load): digits only.
    Staging (``.incoming-*``) and moved-aside (``.orphaned-*``) directories are not."""
    return name.isascii() and name.isdigit()


def version_order(version) -> Tuple[int, str]:
    """A sort key for version names: numeric versions by number, after any other name."""
    text = str(version)
    return (int(text), text) if is_version_name(text) else (-1, text)


def existing_versions(base_directory: str) -> List[int]:
    """The version directories under ``base_directory`` (what servers load), ascending."""
    if not os.path.isdir(base_directory):
        return []
    return sorted(int(name) for name in os.listdir(base_directory)
                  if is_version_name(name) and os.path.isdir(os.path.join(base_directory, name)))


def newest_version(base_directory: str) -> Optional[int]:
    """The highest version under ``base_directory`` (what a ``latest`` server serves); None if none."""
    return max(existing_versions(base_directory), default=None)


def next_version(base_directory: str, now: float = None) -> int:
    newest = newest_version(base_directory) or 0
    return max(int(now if now is not None else time.time()), newest + 1)


def publish_atomically(model_path: str, base_directory: str, record: Optional[Dict] = None) -> str:
    """Copy ``model_path`` to ``base_directory/<version>`` atomically; returns the version.

    ``record`` (JSON-able) goes into the version's push marker, beside the owner and
    the base directory (a copy of the version elsewhere is then known as a copy).
    """
    os.makedirs(base_directory, exist_ok=True)
    version = next_version(base_directory)
    staging = os.path.join(base_directory, f"{INCOMING_PREFIX}{version}-{os.getpid()}")
    try:
        os.mkdir(staging)
        write_marker(staging, dict(record or {}, base_directory=os.path.realpath(base_directory)))
        shutil.copytree(model_path, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
        version = _rename_to_free_version(staging, base_directory, version)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return str(version)


def _rename_to_free_version(staging: str, base_directory: str, version: int) -> int:
    """A concurrent pusher may have taken the number meanwhile: rename fails on a
    non-empty target, so move on to the next free version."""
    while True:
        target = os.path.join(base_directory, str(version))
        try:
            os.rename(staging, target)
            return version
        except OSError:
            if not os.path.exists(target):
                raise
            version += 1


# ------------------------------------------------------------------- markers
def write_marker(directory: str, record: Optional[Dict] = None) -> None:
    marker = {"owner": Owner.current().as_dict(),
              "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **(record or {})}
    with open(os.path.join(directory, MARKER), "w") as handle:
        json.dump(marker, handle, indent=1, default=str)


def read_marker(directory: str) -> Optional[Dict]:
    """The push marker inside a version or staging directory; None if absent or unreadable."""
    try:
        with open(os.path.join(directory, MARKER)) as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def owner_of(directory: str) -> Optional[Owner]:
    """Who writes (or wrote) this version or staging directory: the marker's owner,
    else the pid in a staging directory's name (this host); None if unknown."""
    marker = read_marker(directory) or {}
    owner = Owner.from_dict(marker.get("owner"))
    if owner is None:
        match = _STAGING_NAME.fullmatch(os.path.basename(directory))
        owner = Owner(int(match.group(1)), socket.gethostname()) if match else None
    return owner


# ------------------------------------------------------------ what is left
def staging_directories(base_directory: str) -> List[str]:
    """The ``.incoming-*`` directories under ``base_directory`` (copies under way, or
    cut short), as paths, by name."""
    if not os.path.isdir(base_directory):
        return []
    return [os.path.join(base_directory, name) for name in sorted(os.listdir(base_directory))
            if name.startswith(INCOMING_PREFIX) and os.path.isdir(os.path.join(base_directory, name))]


def remove_stale_staging(base_directory: str) -> Tuple[List[str], List[str]]:
    """Remove the ``.incoming-*`` directories whose writer is gone: (removed, kept).
    A staging directory of a live process, of another host, or of an unknown
    writer is kept."""
    removed, kept = [], []
    for path in staging_directories(base_directory):
        owner = owner_of(path)
        if owner is None or owner.state() != DEAD:
            kept.append(path)
            continue
        shutil.rmtree(path, ignore_errors=True)
        (kept if os.path.exists(path) else removed).append(path)
    return removed, kept


def move_aside(base_directory: str, version: str) -> str:
    """Rename ``<base>/<version>`` to ``<base>/.orphaned-<version>`` (servers no longer
    see it; the files stay for a person to inspect); returns the new path."""
    target = os.path.join(base_directory, f"{ORPHANED_PREFIX}{version}")
    if os.path.exists(target):
        target += f"-{int(time.time())}"
    os.rename(os.path.join(base_directory, str(version)), target)
    return target
