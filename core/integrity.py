"""Model integrity: the manifest of a pushed version's files, and its check.

``core.pushdir.publish_atomically`` writes ``MANIFEST_NAME`` into every version it
publishes, after every stager ran (model card, input domain), so it covers every
file of the version: its path relative to the version (POSIX), size and SHA-256.
Top-level files the publisher rewrites later (the push marker) are named in the
manifest's ``uncovered`` list and left out; so is the manifest itself.

When the environment variable that ``model_integrity_key_env`` names holds a key,
the manifest carries an HMAC-SHA256 ``signature`` of its canonical JSON (sorted
keys, no spaces, without the signature); the key is never written anywhere.

``verify_version`` compares a version directory with its manifest and names every
file that is missing, extra or changed, and a bad or missing signature when a key
is given. Without a key the manifest catches corrupted and altered files, but not
a writer who can also rewrite the manifest: set a key to stop that one. With a key,
a version without a manifest is refused whatever the mode (deleting the manifest
would otherwise get round the signature).

Files only, through ``core.storage`` (a ``gs://`` push directory is read there).
"""
import dataclasses
import hashlib
import hmac
import json
import os
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

from core import storage
from core.storage import Location

MANIFEST_NAME = ".tfxops-manifest.json"     # inside each version, beside the push marker
MODES = ("verify", "require", "off")
FORMAT = 1
SIGNATURE_PREFIX = "hmac-sha256:"
FIX = ("push the model again (`tfxops run`, or the monitor's re-push) or remove the version "
       "directory; `tfxops verify` lists what differs")


@dataclasses.dataclass(frozen=True)
class FileDigest:
    path: str        # relative to the version, POSIX separators
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class VersionIntegrity:
    """What ``verify_version`` found: ``problems`` each name a file (or the manifest)."""
    ok: bool
    problems: List[str]
    signed: bool          # the manifest carries a signature (checked when a key was given)
    has_manifest: bool

    def summary(self) -> str:
        return "; ".join(self.problems)


@dataclasses.dataclass(frozen=True)
class Manifest:
    raw: Dict                        # as written (what the signature covers)
    digests: Dict[str, FileDigest]   # by relative path
    uncovered: List[str]             # top-level names left out


class ManifestError(ValueError):
    """The manifest is there but cannot be read as one."""


@dataclasses.dataclass(frozen=True)
class IntegrityPolicy:
    """How a server checks a version before loading it: ``mode`` (setting
    ``model_integrity``) and the key (from ``model_integrity_key_env``)."""
    mode: str = MODES[0]
    key: Optional[bytes] = dataclasses.field(default=None, repr=False)

    def check(self, version_dir: Location) -> Optional[VersionIntegrity]:
        """The version's check; None when the mode is off."""
        if self.mode == "off":
            return None
        return verify_version(version_dir, self.key, require_manifest=self.mode == "require")


# ------------------------------------------------------------------ settings, key
def settings_problem(values: Mapping) -> str:
    """What is wrong with this part's settings (``core.config.load``'s values); "" if nothing."""
    mode = values.get("model_integrity", MODES[0])
    if mode not in MODES:
        return f"setting 'model_integrity' must be one of {', '.join(MODES)}, got {mode!r}"
    return ""


def integrity_key(env_name: str) -> Optional[bytes]:
    """The HMAC key in the environment variable ``env_name``; None if unset or empty."""
    value = os.environ.get(env_name, "") if env_name else ""
    return value.encode() if value else None


# ------------------------------------------------------------------ digests
def _relative_files(version_dir: Location, relative: str = "") -> Iterator[str]:
    """Every file under ``version_dir`` (directories followed, as TensorFlow follows
    them), as a relative POSIX path, sorted."""
    here = storage.join(version_dir, relative) if relative else version_dir
    for name in sorted(storage.listdir(here)):
        path = f"{relative}/{name}" if relative else name
        if storage.isdir(storage.join(version_dir, path)):
            yield from _relative_files(version_dir, path)
        else:
            yield path


def file_digest(version_dir: Location, relative: str) -> FileDigest:
    digest, size = hashlib.sha256(), 0
    for chunk in storage.read_chunks(storage.join(version_dir, relative)):
        digest.update(chunk)
        size += len(chunk)
    return FileDigest(relative, size, digest.hexdigest())


def covered_files(version_dir: Location, uncovered: Iterable[str] = ()) -> List[str]:
    """The files of a version the manifest covers: all but the manifest and the
    top-level names in ``uncovered``."""
    left_out = {MANIFEST_NAME, *uncovered}
    return [path for path in _relative_files(version_dir) if path not in left_out]


# ------------------------------------------------------------------ the manifest
def _canonical(body: Dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _signature(body: Dict, key: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def write_manifest(version_dir: Location, key: Optional[bytes], uncovered: Sequence[str] = ()) -> None:
    """Write ``MANIFEST_NAME`` into ``version_dir``: every file's digest, signed when
    ``key`` is given. ``uncovered``: top-level names left out (rewritten later)."""
    files = [dataclasses.asdict(file_digest(version_dir, path))
             for path in covered_files(version_dir, uncovered)]
    body = {"format": FORMAT, "files": files, "uncovered": sorted(uncovered)}
    manifest = dict(body, signature=_signature(body, key)) if key else body
    storage.write_text(storage.join(version_dir, MANIFEST_NAME), json.dumps(manifest, indent=1))


def read_manifest(version_dir: Location) -> Optional[Manifest]:
    """The manifest of ``version_dir``; None if it has none; ``ManifestError`` if it
    is not one (unreadable, not JSON, fields missing or of the wrong type)."""
    path = storage.join(version_dir, MANIFEST_NAME)
    if not storage.exists(path):
        return None
    try:
        raw = json.loads(storage.read_text(path))
        digests = {entry["path"]: FileDigest(str(entry["path"]), int(entry["size"]), str(entry["sha256"]))
                   for entry in raw["files"]}
        uncovered = [name for name in raw.get("uncovered", []) if isinstance(name, str) and "/" not in name]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ManifestError(f"{MANIFEST_NAME}: unreadable or not a manifest") from None
    if raw.get("format") != FORMAT:
        raise ManifestError(f"{MANIFEST_NAME}: format {raw.get('format')!r}, this tfxops reads format {FORMAT}")
    return Manifest(raw, digests, uncovered)


# ------------------------------------------------------------------ the check
def verify_version(version_dir: Location, key: Optional[bytes], require_manifest: bool) -> VersionIntegrity:
    """Compare ``version_dir`` with its manifest. A version without a manifest is
    fine unless ``require_manifest`` or a ``key`` is given."""
    try:
        manifest = read_manifest(version_dir)
    except ManifestError as exc:
        return VersionIntegrity(False, [str(exc)], False, True)
    if manifest is None:
        if not (require_manifest or key):
            return VersionIntegrity(True, [], False, False)
        why = "a key is configured" if key else "model_integrity is require"
        return VersionIntegrity(False, [f"{MANIFEST_NAME}: missing ({why}; the version was not pushed "
                                        f"by tfxops, or before manifests were written)"], False, False)
    problems = _signature_problems(manifest.raw, key) + _file_problems(version_dir, manifest)
    return VersionIntegrity(not problems, problems, "signature" in manifest.raw, True)


def _signature_problems(raw: Dict, key: Optional[bytes]) -> List[str]:
    if key is None:
        return []
    if "signature" not in raw:
        return [f"{MANIFEST_NAME}: not signed, but a key is configured (sign pushes with the same key)"]
    body = {name: value for name, value in raw.items() if name != "signature"}
    if not hmac.compare_digest(str(raw["signature"]), _signature(body, key)):
        return [f"{MANIFEST_NAME}: bad signature (signed with another key, or edited after the push)"]
    return []


def _file_problems(version_dir: Location, manifest: Manifest) -> List[str]:
    listed = manifest.digests
    try:
        present = covered_files(version_dir, manifest.uncovered)
    except OSError:
        return [f"{version_dir}: cannot be listed"]
    problems = [f"{path}: missing (the manifest lists it)" for path in sorted(set(listed) - set(present))]
    for path in present:
        if path not in listed:
            problems.append(f"{path}: extra (not in the manifest)")
            continue
        try:
            found = file_digest(version_dir, path)
        except OSError:
            problems.append(f"{path}: unreadable")
            continue
        if found != listed[path]:
            problems.append(f"{path}: changed (its SHA-256 differs from the manifest's)")
    return problems
