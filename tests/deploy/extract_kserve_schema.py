"""Writes tests/deploy/kserve-inferenceservice-v1beta1.schema.json from KServe's CRD.

    python -m tests.deploy.extract_kserve_schema CRD_YAML SOURCE > tests/deploy/kserve-inferenceservice-v1beta1.schema.json

CRD_YAML is KServe's ``config/crd/full/serving.kserve.io_inferenceservices.yaml`` (about
2 MB: every component embeds a whole PodSpec); SOURCE says where it came from (repository,
tag, commit). The committed schema is its ``v1beta1`` openAPIV3Schema, cut down to what
deploy/k8s/kserve/inferenceservice.yaml can use, and made strict:

* ``spec.predictor`` is kept whole, except its PodSpec-sized members (``STUBBED``), which
  keep only their type; ``spec.canary``/``explainer``/``transformer`` and ``status`` keep
  only their type too. Every property name stays, so a misspelt field is still caught.
* An object that lists its properties rejects others (``additionalProperties: false``),
  as the API server does under strict field validation (kubectl's default), unless the CRD
  marks it ``x-kubernetes-preserve-unknown-fields``.
"""
import json
import sys
from typing import Dict

import yaml

GROUP, VERSION, KIND = "serving.kserve.io", "v1beta1", "InferenceService"
# spec.predictor members that embed Kubernetes core types wholesale (containers, volumes,
# affinity, ...) or another framework's runtime: type only
STUBBED = ("affinity", "autoScaling", "containers", "initContainers", "volumes", "workerSpec",
           "model", "huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn",
           "triton", "xgboost")


def stub(schema: Dict) -> Dict:
    return {"type": schema["type"]} if "type" in schema else {}


def strict(schema):
    """The schema with ``additionalProperties: false`` on every closed object."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def inference_service_schema(crd: Dict, source: str) -> Dict:
    """The strict, cut-down JSON Schema of an InferenceService (see the module doc)."""
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    predictor = spec["properties"]["predictor"]
    predictor = dict(predictor, properties={
        name: stub(member) if name in STUBBED else member
        for name, member in predictor["properties"].items()})
    spec = dict(spec, properties={
        name: predictor if name == "predictor" else stub(member)
        for name, member in spec["properties"].items()})
    properties = dict(schema["properties"], spec=spec, status=stub(schema["properties"]["status"]))
    cut = strict(dict(schema, properties=properties))
    return {"$comment": f"KServe {KIND} {VERSION} from {source}; cut down and made strict "
                        f"by tests/deploy/extract_kserve_schema.py",
            "x-kubernetes-group-version-kind": {"group": GROUP, "version": VERSION, "kind": KIND},
            **cut}


def main(argv) -> int:
    if len(argv) != 2:
        print("usage: " + __doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    crd_path, source = argv
    with open(crd_path) as handle:
        crd = yaml.safe_load(handle)
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"].get("group") != GROUP:
        print(f"{crd_path} is not KServe's InferenceService CRD", file=sys.stderr)
        return 2
    json.dump(inference_service_schema(crd, source), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
