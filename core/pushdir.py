"""Publishing a model version into a serving directory, whole or not at all, and
finding what a killed publisher left there. Files only (no TFX, no MLMD), so
monitoring, lineage and the server can import it. The directory may be local or
on a store TensorFlow reaches (``gs://``, ``s3://``...; ``core.storage``).

``publish_atomically`` makes ``<base>/.incoming-<version>-<pid>``, writes a push
marker (``MARKER``) into it first, and copies the model beside it. The marker
stays inside the version: who pushed it (pid, host, process start time) and,
when the caller says, which pipeline run, Pusher execution and model.
``pipeline/recovery.py`` reads it to match a version that has no MLMD record to
the execution that pushed it. After the stagers (model card, input domain), the
version's manifest (``core.integrity.MANIFEST_NAME``: every other file's SHA-256,
the marker's included, and the version number and model name it is published as,
HMAC-signed when a key is configured) is written beside it; the server checks it
before loading the version. Then the version appears, by store:

* **Local disk** (a path or ``file://``): the staging directory is renamed to
  ``<base>/<version>`` in one atomic rename. A numeric directory is always
  complete; one without a marker is a version tfxops did not push, and is listed.
* **Object stores** (``gs://``, ``s3://``, any other scheme: no directory rename):
  the staged files are copied to ``<base>/<version>/`` and the marker is written
  there LAST: it is the version's completion marker. Every reader here
  (``existing_versions``, ``newest_version``, so the server's version discovery,
  the monitor, lineage and recovery) lists only numeric directories that hold
  it; a version whose copy is under way, or was cut short, is not there yet.
  TF Serving does not check the marker: it loads a numeric directory as soon as
  it sees one, so do not point TF Serving at an object-store push directory
  (docs/storage.md says what to do instead). One writer per push directory on
  an object store: the stores have no exclusive create, so two publishers could
  pick the same version number.

A ``kill -9`` leaves at most one of these behind (``pipeline/recovery.py`` deals
with each): a staging directory, during the copy (never visible to a server:
hidden, not numeric); on an object store, a numeric directory without its marker
(invisible to our readers; removed with the staging directory of its dead
writer, whose marker names it); or a whole version without its MLMD record,
between the publication and the caller's record.
"""
import dataclasses
import datetime
import json
import os
import re
import socket
import time
from typing import Callable, Dict, List, Optional, Tuple

from core import integrity, storage
from core.config import Settings
from core.storage import Location
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


def _numbered_directories(base_directory: Location) -> List[int]:
    """Every numeric directory under ``base_directory``, complete or not, ascending."""
    if not storage.isdir(base_directory):
        return []
    return sorted(int(name) for name in storage.listdir(base_directory)
                  if is_version_name(name) and storage.isdir(storage.join(base_directory, name)))


def is_complete_version(base_directory: Location, version) -> bool:
    """Whether ``<base>/<version>`` is a whole version: always on a local disk (it
    appeared by an atomic rename), only once its marker is written on an object store."""
    return (storage.has_atomic_rename(base_directory)
            or storage.exists(storage.join(base_directory, str(version), MARKER)))


def existing_versions(base_directory: Location) -> List[int]:
    """The complete version directories under ``base_directory`` (what servers load), ascending."""
    return [version for version in _numbered_directories(base_directory)
            if is_complete_version(base_directory, version)]


def newest_version(base_directory: Location) -> Optional[int]:
    """The highest version under ``base_directory`` (what a ``latest`` server serves); None if none."""
    return max(existing_versions(base_directory), default=None)


def next_version(base_directory: Location, now: float = None) -> int:
    """Unix seconds, past every numeric directory (a version still being copied included)."""
    newest = max(_numbered_directories(base_directory), default=0)
    return max(int(now if now is not None else time.time()), newest + 1)


# Writes files that name the version into the staged copy: (staging directory, version).
Stager = Callable[[Location, int], None]


def publish_atomically(model_path: Location, base_directory: Location, record: Optional[Dict] = None,
                       stage: Optional[Stager] = None,
                       integrity_key_env: str = Settings.model_integrity_key_env) -> str:
    """Copy ``model_path`` to ``base_directory/<version>``, whole or not at all (see
    the module docstring for what that means on each store); returns the version.

    ``record`` (JSON-able) goes into the version's push marker, beside the owner and
    the base directory (a copy of the version elsewhere is then known as a copy).
    ``stage``, when given, writes files of its own into the staged copy for the
    version it is about to become (called again if a concurrent pusher took that
    number), so they appear with the version (e.g. its model card). Then the
    version's manifest (``core.integrity``) is written into the staged copy, signed
    with the key in the environment variable ``integrity_key_env`` when it holds one:
    it covers every file, the marker too, and names the version and the model
    (``base_directory``'s name) it is published as.
    """
    storage.makedirs(base_directory)
    version = next_version(base_directory)
    staging = storage.join(base_directory, f"{INCOMING_PREFIX}{version}-{os.getpid()}")
    try:
        storage.make_new_dir(staging)
        write_marker(staging, dict(record or {}, base_directory=storage.canonical(base_directory)))
        storage.copy_tree(model_path, staging, skip=[MARKER])
        stage = _sealed(stage, integrity.integrity_key(integrity_key_env), base_directory)
        if storage.has_atomic_rename(base_directory):
            version = _rename_to_free_version(staging, base_directory, version, stage)
        else:
            version = _copy_to_free_version(staging, base_directory, version, stage)
    finally:
        if storage.exists(staging):
            storage.remove_tree(staging)
    return str(version)


def _sealed(stage: Optional[Stager], key: Optional[bytes], base_directory: Location) -> Stager:
    """``stage``, then the manifest of everything staged, the marker in its final
    form included, bound to ``<base>/<version>``."""
    def stage_and_seal(directory: Location, version: int) -> None:
        if stage is not None:
            stage(directory, version)
        integrity.write_manifest(directory, key, str(version), integrity.model_of(base_directory))
    return stage_and_seal


def _rename_to_free_version(staging: Location, base_directory: Location, version: int, stage: Stager) -> int:
    """A concurrent pusher may have taken the number meanwhile: rename fails on a
    non-empty target, so move on to the next free version."""
    while True:
        target = storage.join(base_directory, str(version))
        stage(staging, version)
        try:
            storage.rename_dir(staging, target)
            return version
        except OSError:
            if not storage.exists(target):
                raise
            version += 1


def _copy_to_free_version(staging: Location, base_directory: Location, version: int, stage: Stager) -> int:
    """No rename on this store: copy the staged files to the first free version, then
    write the marker there last. The staging marker names the version first, so a
    dead writer's half copy is known (``remove_stale_staging``)."""
    while storage.exists(storage.join(base_directory, str(version))):
        version += 1
    target = storage.join(base_directory, str(version))
    marker = dict(read_marker(staging) or {}, version=str(version))
    storage.remove(storage.join(staging, MARKER))             # rewritten whole (ram:// appends to a file)
    _write_json(storage.join(staging, MARKER), marker)
    stage(staging, version)                                   # the manifest covers the marker as written last
    try:
        storage.copy_tree(staging, target, skip=[MARKER])
        storage.write_text(storage.join(target, MARKER),                # last: the version is complete
                           storage.read_text(storage.join(staging, MARKER)))
    except BaseException:
        storage.remove_tree(target)
        raise
    return version


@dataclasses.dataclass(frozen=True)
class Mirrored:
    """What ``mirror_versions`` did: versions copied, and versions not copied because
    they failed their integrity check (version -> the problems, each naming a file)."""
    copied: List[str]
    refused: Dict[str, List[str]]


def mirror_versions(source_base: Location, target_base: Location,
                    policy: integrity.IntegrityPolicy = integrity.IntegrityPolicy()) -> Mirrored:
    """Copy each complete version of ``source_base`` (an object store, say) that
    ``target_base`` lacks and that passes ``policy``'s check (as the server's, before
    it loads one) into it, by an atomic rename of a staged copy, so that a server
    that checks nothing (TF Serving) watching ``target_base`` only ever sees whole,
    verified versions. Additive: a version that leaves the source (moved aside
    there) stays in the target. The manifests name their model: ``target_base``
    should have ``source_base``'s name (``/models/<model_name>``)."""
    if not storage.has_atomic_rename(target_base):
        raise ValueError(f"{target_base} has no atomic rename: mirror into a local directory")
    storage.makedirs(target_base)
    present = set(_numbered_directories(target_base))
    copied, refused = [], {}
    for version in existing_versions(source_base):
        if version in present:
            continue
        source = storage.join(source_base, str(version))
        checked = policy.check(source)
        if checked is not None and not checked.ok:
            refused[str(version)] = checked.problems
            continue
        _copy_by_rename(source, target_base, version)
        copied.append(str(version))
    return Mirrored(copied, refused)


def _copy_by_rename(source: Location, target_base: Location, version: int) -> None:
    staging = storage.join(target_base, f"{INCOMING_PREFIX}{version}-{os.getpid()}")
    try:
        storage.remove_tree(staging)          # a copy of an earlier process with this pid
        storage.copy_tree(source, staging)
        storage.rename_dir(staging, storage.join(target_base, str(version)))
    finally:
        storage.remove_tree(staging)


# ------------------------------------------------------------------- markers
def _write_json(path: Location, value: Dict) -> None:
    storage.write_text(path, json.dumps(value, indent=1, default=str))


def write_marker(directory: Location, record: Optional[Dict] = None) -> None:
    _write_json(storage.join(directory, MARKER),
                {"owner": Owner.current().as_dict(),
                 "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 **(record or {})})


def read_marker(directory: Location) -> Optional[Dict]:
    """The push marker inside a version or staging directory; None if absent or unreadable."""
    try:
        marker = json.loads(storage.read_text(storage.join(directory, MARKER)))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def owner_of(directory: Location) -> Optional[Owner]:
    """Who writes (or wrote) this version or staging directory: the marker's owner,
    else the pid in a staging directory's name (this host); None if unknown."""
    marker = read_marker(directory) or {}
    owner = Owner.from_dict(marker.get("owner"))
    if owner is None:
        match = _STAGING_NAME.fullmatch(os.path.basename(str(directory)))
        owner = Owner(int(match.group(1)), socket.gethostname()) if match else None
    return owner


# ------------------------------------------------------------ what is left
def staging_directories(base_directory: Location) -> List[Location]:
    """The ``.incoming-*`` directories under ``base_directory`` (copies under way, or
    cut short), as paths, by name."""
    if not storage.isdir(base_directory):
        return []
    paths = [storage.join(base_directory, name) for name in sorted(storage.listdir(base_directory))
             if name.startswith(INCOMING_PREFIX)]
    return [str(path) for path in paths if storage.isdir(path)]


def remove_stale_staging(base_directory: Location) -> Tuple[List[str], List[str]]:
    """Remove the ``.incoming-*`` directories whose writer is gone, and on an object
    store the unfinished version each was copying to: (removed, kept). A staging
    directory of a live process, of another host, or of an unknown writer is kept."""
    removed, kept = [], []
    for path in staging_directories(base_directory):
        owner = owner_of(path)
        if owner is None or owner.state() != DEAD:
            kept.append(path)
            continue
        removed += _remove_unfinished_version(base_directory, read_marker(path))
        storage.remove_tree(path)
        (kept if storage.exists(path) else removed).append(path)
    return removed, kept


def _remove_unfinished_version(base_directory: Location, staging_marker: Optional[Dict]) -> List[str]:
    """The version a dead writer was copying to without its marker (object stores), removed."""
    version = str((staging_marker or {}).get("version", ""))
    if not is_version_name(version) or is_complete_version(base_directory, version):
        return []
    target = storage.join(base_directory, version)
    if not storage.exists(target):
        return []
    storage.remove_tree(target)
    return [str(target)]


def move_aside(base_directory: Location, version: str) -> str:
    """Move ``<base>/<version>`` to ``<base>/.orphaned-<version>`` (servers no longer
    see it; the files stay for a person to inspect); returns the new path. On an
    object store the marker goes first (the version disappears at once), then the
    files are copied and removed."""
    source = storage.join(base_directory, str(version))
    target = str(storage.join(base_directory, f"{ORPHANED_PREFIX}{version}"))
    if storage.exists(target):
        target += f"-{int(time.time())}"
    if storage.has_atomic_rename(base_directory):
        storage.rename_dir(source, target)
        return target
    marker = read_marker(source)
    storage.remove(storage.join(source, MARKER))
    storage.copy_tree(source, target)
    if marker is not None:
        _write_json(storage.join(target, MARKER), marker)
    storage.remove_tree(source)
    return target
