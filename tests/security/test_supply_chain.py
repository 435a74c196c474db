"""Supply chain (issue 16 part 7): the locks carry every file's SHA-256 and everything installs
in pip's hash-checking mode (a file that is not the one locked is refused, whatever index or
mirror serves it); `make lock` writes such locks; `make sbom` lists the environment as
CycloneDX; the images run as non-root users without privileges, with read-only models."""
import base64
import fcntl
import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from tests.code.test_images import DOCKERFILE, instructions
from tests.conftest import REPO
from tests.deploy.conftest import UNREACHABLE

LOCK = REPO / "constraints.txt"
BOOTSTRAP_LOCK = REPO / "requirements-bootstrap.txt"
SBOM_LOCK = REPO / "tools" / "sbom-requirements.txt"
LOCK_TOOL = REPO / "tools" / "lock.py"
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})$")


def locked(path: Path) -> Dict[str, Tuple[str, List[str]]]:
    """{name: (version, [sha256, ...])} of a lock, continuation lines joined as pip joins them."""
    text = re.sub(r"\s*\\\n\s*", " ", path.read_text())
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            requirement, *options = line.split()
            name, version = requirement.split("==")
            assert options and all(HASH.match(option) for option in options), (path.name, line)
            pins[name] = (version, [HASH.match(option).group(1) for option in options])
    return pins


def pip(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, cwd=cwd)


def make_wheel(directory: Path, name: str, version: str, code: str) -> Path:
    """A pure-Python wheel of one module, ``name``.py holding ``code``."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": code,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(text.encode())}\n"
    files[f"{dist}/RECORD"] = record + f"{dist}/RECORD,,\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install_offline(requirements: Path, wheels: Path, target: Path) -> subprocess.CompletedProcess:
    """pip install -r ``requirements`` in hash-checking mode from the files in ``wheels`` only."""
    return pip("install", "--require-hashes", "--no-deps", "--no-index", "--find-links", str(wheels),
               "--target", str(target), "-r", str(requirements))


# ------------------------------------------------------------------------------ the locks
def test_every_pin_of_every_lock_carries_the_sha256_of_its_files():
    lock, bootstrap = locked(LOCK), locked(BOOTSTRAP_LOCK)
    assert len(lock) > 200 and lock["tensorflow"][0] == "2.16.2" and lock["tfx"][0] == "1.16.0"
    assert "tfxops" not in lock                          # the project is installed from source
    # several platforms' wheels of a binary package: each one verifies wherever it installs
    assert len(lock["tensorflow"][1]) > 3 and len(lock["grpcio"][1]) > 10
    assert set(bootstrap) == {"pip", "setuptools", "wheel"} and not set(bootstrap) & set(lock)
    assert bootstrap["pip"][0] in SpecifierSet(">=23,<25")       # the range the install has kept
    assert bootstrap["setuptools"][0] in SpecifierSet(">=64,<76")
    tools = locked(SBOM_LOCK)
    assert "cyclonedx-bom" in tools and "pip" not in tools        # its pip: the bootstrap lock's


def test_the_project_pins_agree_with_the_lock():
    lock = locked(LOCK)
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"]+)"', dependencies.group(1)):
        normalized = {key.lower().replace("_", "-"): value for key, value in lock.items()}
        assert normalized[name.lower().replace("_", "-")][0] == version, name


def makefile_recipe(target: str) -> List[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_installs_everything_in_hash_checking_mode():
    installs = [line for line in makefile_recipe("$(STAMP)") if "pip install" in line]
    assert installs, "the Makefile's install recipe has no pip install"
    for line in installs:
        if " -r " in line:                                  # a lock: every file checked
            assert "--require-hashes" in line and "--no-deps" in line, line
        else:                                               # the project itself, from this tree
            assert line.endswith("--no-deps --no-build-isolation -e ."), line
    assert installs[0].endswith("-r $(BOOTSTRAP_LOCK)")     # pip, setuptools, wheel first
    assert any("--no-build-isolation -r $(LOCK)" in line for line in installs)   # no unhashed build deps
    assert "$(VENV)/bin/pip check" in makefile_recipe("$(STAMP)")            # the lock is complete
    steps = instructions(DOCKERFILE.read_text())
    runs = [rest for keyword, rest in steps if keyword == "RUN" and "pip install" in rest]
    for run in runs:
        for install in run.split("&&"):
            assert ("--require-hashes" in install) == (" -r " in install), install


# --------------------------------------------------------------------- the attack: a swapped file
def test_a_swapped_file_is_refused_and_only_the_locked_one_installs(tmp_path):
    """A mirror (or a compromised index) serves a file of the right name and version whose
    bytes are not the locked ones: pip in hash-checking mode refuses it and installs nothing."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    docopt_version, docopt_hashes = locked(LOCK)["docopt"]
    swapped = make_wheel(mirror, "docopt", docopt_version, "import os\nos.system('id')\n")
    requirement = tmp_path / "docopt.txt"
    requirement.write_text(f"docopt=={docopt_version} " + " ".join(f"--hash=sha256:{h}" for h in docopt_hashes))
    refused = install_offline(requirement, mirror, tmp_path / "target")
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr and sha256(swapped) in refused.stderr
    assert not (tmp_path / "target" / "docopt.py").exists()
    # the same file installs when its own hash is the locked one: the refusal was the hash
    requirement.write_text(f"docopt=={docopt_version} --hash=sha256:{sha256(swapped)}")
    assert install_offline(requirement, mirror, tmp_path / "target").returncode == 0
    assert (tmp_path / "target" / "docopt.py").read_text().startswith("import os")


def test_a_requirement_without_a_hash_is_refused(tmp_path):
    make_wheel(tmp_path, "unhashed", "1.0", "")
    requirement = tmp_path / "unhashed.txt"
    requirement.write_text("unhashed==1.0\n")
    result = install_offline(requirement, tmp_path, tmp_path / "target")
    assert result.returncode != 0 and "Hashes are required in --require-hashes mode" in result.stderr


# ------------------------------------------------------------------------------ make lock
class SimpleIndex(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def index(tmp_path):
    """A package index on this machine (PEP 691 JSON pages): probe 1.0 has a wheel and an
    sdist, probe 2.0 a wheel, on top of the wheel the lock is to verify."""
    files = tmp_path / "files"
    files.mkdir()
    wheel = make_wheel(files, "probe", "1.0", "VALUE = 1\n")
    entries = [{"filename": wheel.name, "url": f"../../files/{wheel.name}", "hashes": {"sha256": sha256(wheel)}},
               {"filename": "probe-1.0.tar.gz", "url": "x", "hashes": {"sha256": "a" * 64}},
               {"filename": "probe-2.0-py3-none-any.whl", "url": "x", "hashes": {"sha256": "b" * 64}},
               {"filename": "probe-1.0-py3+-none-any.whl", "url": "x", "hashes": {"sha256": "c" * 64}}]
    page = tmp_path / "simple" / "probe"
    page.mkdir(parents=True)
    (page / "index.html").write_text(json.dumps({"meta": {"api-version": "1.0"}, "name": "probe", "files": entries}))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *args: SimpleIndex(*args, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", wheel
    server.shutdown()
    server.server_close()


def test_make_lock_writes_every_file_of_the_pinned_version_and_pip_accepts_it(tmp_path, index):
    url, wheel = index
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("probe==1.0\n-e git+https://example.invalid/x#egg=tfxops\ntfxops==0.1.0\npip==24.3.1\n")
    lock = tmp_path / "lock.txt"
    lock.write_text("# kept header\nprobe==0.9 \\\n    --hash=sha256:" + "d" * 64 + "\n")
    done = subprocess.run([sys.executable, str(LOCK_TOOL), str(freeze), str(lock), "--index-url", url],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert lock.read_text().startswith("# kept header\n")
    # the wheel and the sdist of 1.0; not 2.0's, not a file name no tool parses, not the project
    assert locked(lock) == {"probe": ("1.0", sorted([sha256(wheel), "a" * 64]))}
    assert install_offline(lock, wheel.parent, tmp_path / "target").returncode == 0
    wheel.write_bytes(wheel.read_bytes() + b"\0")                # the file changes after locking
    assert install_offline(lock, wheel.parent, tmp_path / "again").returncode != 0


def test_make_lock_refuses_a_version_the_index_does_not_have(tmp_path, index):
    url, _ = index
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("probe==3.0\n")
    lock = tmp_path / "lock.txt"
    lock.write_text("probe==1.0 \\\n    --hash=sha256:" + "e" * 64 + "\n")
    done = subprocess.run([sys.executable, str(LOCK_TOOL), str(freeze), str(lock), "--index-url", url],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "has no file of probe==3.0" in done.stderr
    assert "Traceback" not in done.stderr
    assert locked(lock) == {"probe": ("1.0", ["e" * 64])}       # the lock is left as it was


# ------------------------------------------------------------------------------ make sbom
@pytest.fixture(scope="module")
def sbom(tmp_path_factory) -> dict:
    """`make sbom` of the environment running these tests (its tools venv built on first use)."""
    path = tmp_path_factory.mktemp("sbom") / "sbom.cdx.json"
    venv = Path(sys.prefix)
    (REPO / ".cache").mkdir(exist_ok=True)
    with open(REPO / ".cache" / "tools-venv-sbom.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)               # one tools venv installer at a time
        done = subprocess.run(["make", "--no-print-directory", "-o", f"{venv}/.installed", "sbom",
                               f"VENV={venv}", f"SBOM={path}", f"PYTHON={sys.executable}"],
                              cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if any(marker in output for marker in UNREACHABLE):
            pytest.skip(f"the package registry is unreachable: the SBOM tools cannot be installed: "
                        f"{output.strip().splitlines()[-1]}")
        pytest.fail(f"make sbom failed:\n{output}")
    return json.loads(path.read_text())


def test_make_sbom_lists_every_locked_package_as_cyclonedx(sbom):
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    assert sbom["metadata"]["component"]["name"] == "tfxops"
    components = {component["name"].lower().replace("_", "-"): component for component in sbom["components"]}
    for name, purl in (("tensorflow", "pkg:pypi/tensorflow@2.16.2"), ("tfx", "pkg:pypi/tfx@1.16.0")):
        assert components[name]["purl"] == purl
    for name, (version, _) in locked(LOCK).items():       # the environment is the lock
        assert components[name.lower().replace("_", "-")]["version"] == version, name


# ------------------------------------------------------------------------------ images
def compose_services() -> Dict[str, dict]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def test_the_compose_file_is_valid_compose():
    """No Docker engine here: the Compose Specification's schema stands in for `docker compose config`."""
    schema = json.loads((REPO / "third_party" / "compose_spec" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert [error.message for error in validator.iter_errors(compose)] == []
    compose["services"]["serving"]["security_opts"] = compose["services"]["serving"].pop("security_opt")
    assert any("security_opts" in error.message for error in validator.iter_errors(compose))


def test_every_compose_service_runs_unprivileged_as_a_user_other_than_root():
    for name, service in compose_services().items():
        user = str(service.get("user", ""))
        assert user and user.split(":")[0] not in ("root", "0"), f"{name} runs as root"
        if user.startswith("${"):                        # a variable: its default is not root either
            default = re.fullmatch(r"\$\{TFXOPS_UID:-(\d+)\}:\$\{TFXOPS_GID:-(\d+)\}", user)
            assert default and int(default.group(1)) > 0 and int(default.group(2)) > 0, user
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        assert not service.get("privileged") and "cap_add" not in service, name


def test_models_are_mounted_read_only_wherever_they_are_mounted():
    mounted = []
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if target.startswith("/models") or "serving_model" in source:
                mounted.append(name)
                assert mode == ["ro"], f"{name} mounts {source} writable"
    assert "serving" in mounted


def test_images_are_pinned_and_the_tfxops_image_drops_root():
    for name, service in compose_services().items():
        image = service["image"]
        reference, _, digest = image.partition("@")
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image
        tag = reference.rsplit(":", 1)[1] if ":" in reference.split("/")[-1] else ""
        assert tag and (tag != "latest" or reference == "tfxops:latest"), f"{name}: {image} has no version"
    steps = instructions(DOCKERFILE.read_text())
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1] == "1000:1000"               # the last USER is who runs
    assert any("useradd --uid 1000" in rest for keyword, rest in steps if keyword == "RUN")
    assert (REPO / "tools" / "pin_images.sh").stat().st_mode & 0o111    # make pin-images
