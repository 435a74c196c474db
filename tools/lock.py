"""Write hashed lock files from an environment's `pip freeze --all` (used by `make lock`).

Every pin gets the SHA-256 of every file the package index holds for that version (all
platforms' wheels and the sdist, as pip-compile --generate-hashes does), read from the
index's JSON simple API (PEP 691), so `pip install --require-hashes` verifies whichever
file pip picks on any platform. pip, setuptools and wheel go to the bootstrap lock (they
install first, and build the editable project and any sdist without build isolation);
everything else but tfxops itself to the lock. Versions are taken as they are: nothing is re-resolved.

    python tools/lock.py FREEZE_FILE LOCK [--bootstrap BOOTSTRAP_LOCK] [--index-url URL]
"""
import argparse
import itertools
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

BOOTSTRAP = ("pip", "setuptools", "wheel")
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
PYPI_SIMPLE = "https://pypi.org/simple"      # pip's default index-url
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def pins(freeze_text: str) -> List[Tuple[str, str]]:
    """(name, version) of each `name==version` line; editable and direct-URL lines are left out."""
    found = []
    for line in freeze_text.splitlines():
        match = PIN.match(line.strip())
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def file_version(filename: str) -> Version:
    if filename.endswith(".whl"):
        return parse_wheel_filename(filename)[1]
    return parse_sdist_filename(filename)[1]


def index_files(url: str) -> List[Dict]:
    """The ``files`` of a project's page on the index's JSON simple API; exits naming
    the URL and the fix when the index cannot be read."""
    request = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["files"]
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"error: {url} answered HTTP {exc.code}: is the package on that index, and does the "
                         f"index serve the JSON simple API (PEP 691)? Pass another --index-url") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(f"error: cannot read {url} ({reason}): check the network or proxy, "
                         f"or pass a reachable --index-url") from None
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"error: {url} did not answer with the JSON simple API (PEP 691, {SIMPLE_JSON}): "
                         f"pass an --index-url that serves it") from None


def version_hashes(index_url: str, name: str, version: str) -> List[str]:
    """The sha256 of each file of ``name`` ``version`` on the index, sorted."""
    url = f"{index_url.rstrip('/')}/{canonicalize_name(name)}/"
    files = index_files(url)
    wanted, hashes = Version(version), set()
    for entry in files:
        try:
            matches = file_version(entry["filename"]) == wanted
        except (InvalidVersion, ValueError):     # a file name no parser accepts: not a release file
            continue
        if matches and "sha256" in entry.get("hashes", {}):
            hashes.add(entry["hashes"]["sha256"])
    if not hashes:
        raise SystemExit(f"error: the index at {index_url} has no file of {name}=={version}: "
                         f"is the version pinned in the environment really released there?")
    return sorted(hashes)


def lock_lines(index_url: str, pinned: List[Tuple[str, str]]) -> List[str]:
    lines = []
    for name, version in sorted(pinned, key=lambda pin: canonicalize_name(pin[0])):
        hashes = version_hashes(index_url, name, version)
        lines.append(f"{name}=={version} \\")
        lines.extend(f"    --hash=sha256:{digest}" + (" \\" if i < len(hashes) - 1 else "")
                     for i, digest in enumerate(hashes))
    return lines


def header(path: Path) -> List[str]:
    """The comment lines a lock file starts with (kept across regenerations)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return list(itertools.takewhile(lambda line: line.startswith("#"), lines))


def pip_index_url() -> str:
    """The index pip installs from here: its configured index-url, else pip's default."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True).stdout
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".index-url"):
            return value.strip().strip("'\"").split()[0]
    return PYPI_SIMPLE


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("freeze", type=Path, help="output of pip freeze --all --exclude-editable")
    parser.add_argument("lock", type=Path, help="the lock file to write")
    parser.add_argument("--bootstrap", type=Path, default=None,
                        help="the lock of pip, setuptools and wheel (left out of both without it)")
    parser.add_argument("--index-url", default=None, help="default: pip's own index")
    args = parser.parse_args(argv)
    index_url = args.index_url or pip_index_url()
    locks: Dict[Path, List[Tuple[str, str]]] = {args.lock: []}
    if args.bootstrap:
        locks[args.bootstrap] = []
    for name, version in pins(args.freeze.read_text()):
        if canonicalize_name(name) in BOOTSTRAP:
            locks.get(args.bootstrap, []).append((name, version))
        elif canonicalize_name(name) != "tfxops":
            locks[args.lock].append((name, version))
    for path, pinned in locks.items():
        text = "\n".join(header(path) + lock_lines(index_url, pinned)) + "\n"
        path.with_name(path.name + ".new").write_text(text)
    for path in locks:                     # all replaced only when all were made
        path.with_name(path.name + ".new").replace(path)
        print(f"{path}: {len(locks[path])} pins with the hashes of their files on {index_url}")


if __name__ == "__main__":
    main()
