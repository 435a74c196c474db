"""Every manifest in deploy/k8s/ is a valid Kubernetes resource for KUBERNETES_VERSION,
by kubernetes-validate --strict (unknown fields rejected), run from its tools virtualenv."""
import re
import subprocess

from tests.deploy.conftest import manifest_files

KUBERNETES_VERSION = "1.31.0"


def validate(tool, paths):
    result = subprocess.run([str(tool), "--strict", "-k", KUBERNETES_VERSION, *map(str, paths)],
                            capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


def test_every_manifest_passes_strict_validation(kubernetes_validate, manifests):
    code, output = validate(kubernetes_validate, manifest_files())
    assert code == 0, output
    # each resource was checked against its schema, none skipped as an unknown kind
    passed = set(re.findall(r"passed for resource (\S+/\S+) against version", output))
    assert passed == {key.lower() for key in manifests}, output


def test_strict_validation_rejects_a_misspelt_field(kubernetes_validate, tmp_path):
    deployment = next(p for p in manifest_files() if p.name == "serving-deployment.yaml")
    text = deployment.read_text()
    assert "\n  replicas: " in text
    misspelt = tmp_path / deployment.name
    misspelt.write_text(text.replace("\n  replicas: ", "\n  replica: ", 1))
    code, output = validate(kubernetes_validate, [misspelt])
    assert code != 0 and "'replica' was unexpected" in output, output
