"""Model integrity: the manifest of a pushed version's files, and its check.

``core.pushdir.publish_atomically`` writes ``MANIFEST_NAME`` into every version it
publishes, after every stager ran (model card, input domain), so it covers every
file of the version, the push marker included: its path relative to the version
(POSIX), size and SHA-256; and the version (its directory's name) and model (its
base directory's name) it was published as: with a key, a version copied to another
number or into another model's directory (an old version replayed as the newest)
is refused; a copy under the same number into a directory of the same name
(``tfxops sync-models``, TF Serving's ``/models/<model_name>``) verifies. Without a
key the copier could rewrite the manifest as well, so copies are not refused. Manifests written
before the marker was covered name it in their ``uncovered`` list and left it out.

When the environment variable that ``model_integrity_key_env`` names holds a key,
the manifest carries an HMAC-SHA256 ``signature`` of its canonical JSON (sorted
keys, no spaces, without the signature); the key is never written anywhere.

``verify_version`` compares a version directory with its manifest and names every
file that is missing, extra or changed, and a bad or missing signature when a key
is given. Without a key the manifest catches corrupted and altered files, but not
a writer who can also rewrite the manifest: set a key to stop that one. With a key,
a version without a manifest is refused whatever the mode (deleting the manifest
would otherwise get round the signature), and so is a manifest that names no
version and model (written before they were signed: push again).

Files only, through ``core.storage`` (a ``gs://`` push directory is read there).
"""
import dataclasses
import hashlib
import hmac
import json
import posixpath
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from core import storage
from core.secrets import key_from_env
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

    @classmethod
    def from_settings(cls, settings) -> "IntegrityPolicy":
        """The settings' policy; ``core.secrets.SecretError`` naming the variable if its key is too short."""
        return cls(settings.model_integrity, integrity_key(settings.model_integrity_key_env))

    def warning(self, key_env: str) -> str:
        """What ``require`` without a key does not do, to say at start; "" otherwise."""
        if self.mode != "require" or self.key is not None:
            return ""
        variable = key_env or "the variable model_integrity_key_env names"
        return (f"model_integrity=require without a key: manifests are checked for content only (signatures are "
                f"not checked; a writer who rewrites a manifest with its files passes): set {variable} to the "
                f"key the pipeline signs with")

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
    """The HMAC key in the environment variable ``env_name``; None if unset or empty;
    ``core.secrets.SecretError`` naming the variable if it is too short."""
    return key_from_env(env_name, "the model manifests' HMAC key, setting model_integrity_key_env")


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


def write_manifest(version_dir: Location, key: Optional[bytes], version: str, model: str) -> None:
    """Write ``MANIFEST_NAME`` into ``version_dir`` (a staging directory, say): every
    file's digest, and the ``version`` and ``model`` (base directory name) it is
    published as, signed when ``key`` is given."""
    files = [dataclasses.asdict(file_digest(version_dir, path)) for path in covered_files(version_dir)]
    body = {"format": FORMAT, "files": files, "version": str(version), "model": model}
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
    problems = (_signature_problems(manifest.raw, key) + _binding_problems(version_dir, manifest.raw, key)
                + _file_problems(version_dir, manifest))
    return VersionIntegrity(not problems, problems, "signature" in manifest.raw, True)


def model_of(base_directory: Location) -> str:
    """The model a push directory holds, as manifests name it: the directory's name."""
    return posixpath.basename(str(base_directory).rstrip("/"))


def published_as(version_dir: Location) -> Tuple[str, str]:
    """(model, version) a version directory is served as: its base directory's name and its own."""
    parent, version = posixpath.split(str(version_dir).rstrip("/"))
    return model_of(parent), version


def _binding_problems(version_dir: Location, raw: Dict, key: Optional[bytes]) -> List[str]:
    """With a key, the manifest's (signed) version and model against the directories the
    version is in. Without one a copier could rewrite them as well: not checked."""
    if key is None:
        return []
    if "version" not in raw or "model" not in raw:
        return [f"{MANIFEST_NAME}: names no version and model (written before they were signed), but a key "
                f"is configured: push the version again"]
    model, version = published_as(version_dir)
    problems = []
    if str(raw["version"]) != version:
        problems.append(f"{MANIFEST_NAME}: published as version {raw['version']}, found as version {version} "
                        f"(a copy of another version: an old model replayed as the newest?)")
    if str(raw["model"]) != model:
        problems.append(f"{MANIFEST_NAME}: published for model {raw['model']!r}, found under {model!r} "
                        f"(a version copied from another model's directory?)")
    return problems


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
