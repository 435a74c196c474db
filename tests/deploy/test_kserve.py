"""deploy/k8s/kserve/inferenceservice.yaml against KServe's own CRD schema (which
kubernetes-validate skips: it knows only Kubernetes' built-in kinds), and against the
names and paths of the rest of tfxops."""
import copy
import json
import posixpath
from pathlib import Path

import jsonschema
import pytest
import yaml

from core import config
from tests.conftest import REPO
from tests.deploy.conftest import KSERVE_DIR

SCHEMA = Path(__file__).with_name("kserve-inferenceservice-v1beta1.schema.json")


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def inference_service():
    return yaml.safe_load((KSERVE_DIR / "inferenceservice.yaml").read_text())


def errors(validator, resource):
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(resource)]


def test_inference_service_follows_kserves_schema(validator, inference_service):
    gvk = validator.schema["x-kubernetes-group-version-kind"]
    assert inference_service["apiVersion"] == f"{gvk['group']}/{gvk['version']}"
    assert inference_service["kind"] == gvk["kind"]
    assert errors(validator, inference_service) == []


@pytest.mark.parametrize("path, value", [
    (("spec", "predictor", "logger", "mode"), "everything"),        # not an allowed mode
    (("spec", "predictor", "tensorflow", "storageURI"), "gs://x"),   # misspelt field
    (("spec", "predictor", "minReplicas"), "two"),                   # wrong type
])
def test_schema_rejects_what_kserve_rejects(validator, inference_service, path, value):
    broken = copy.deepcopy(inference_service)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert errors(validator, broken), f"{'.'.join(path)} = {value!r} was accepted"


def test_inference_service_serves_tfxops_model(inference_service):
    settings = config.load({}, environ={})
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    predictor = inference_service["spec"]["predictor"]
    # KServe's TF Serving runtime names the model after the InferenceService
    assert inference_service["metadata"]["name"] == settings.model_name
    assert compose["services"]["serving"]["image"] == f"tensorflow/serving:{predictor['tensorflow']['runtimeVersion']}"
    # the push directory on the volume the other manifests share
    claim = yaml.safe_load((KSERVE_DIR.parent / "outputs-pvc.yaml").read_text())["metadata"]["name"]
    push_dir = posixpath.relpath(str(settings.model_push_dir), settings.home)
    assert predictor["tensorflow"]["storageUri"] == f"pvc://{claim}/{push_dir}"
    assert predictor["logger"]["mode"] == "all"
    assert predictor["logger"]["url"].startswith("http")
