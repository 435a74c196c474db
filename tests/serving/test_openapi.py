"""docs/openapi.yaml (the TF Serving REST API as tfxops serve answers it) against a
running server, and catalog-info.yaml (the Backstage catalog) against itself:

- every documented path and method (TF Serving's API; the Open Inference Protocol's
  /v2 paths, which the server must answer when documented) is called on a real server (tokens and a version
  label configured, so the label paths and the bearer scheme are exercised): the
  answer's status is one the document lists and its body matches the documented
  schema, for a success and for error cases (no token, an unknown model, a bad body);
- routes the server answers but the document lacks fail the test (V2 included);
- the document is valid OpenAPI for openapi-spec-validator (a tools virtualenv built
  once, pinned with hashes in openapi-tools-requirements.txt), which also refuses a
  broken copy (slow: the virtualenv);
- every reference in catalog-info.yaml resolves to one of its entities, and the API
  entity's definition is docs/openapi.yaml.
"""
import copy
import os
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from core import features as F
from serving.client import rest_body, serialize_rows
from serving.server import BackgroundServer
from tests import tool_venv
from tests.conftest import REPO
from tests.serving.conftest import copy_version, serving_settings

DOC = REPO / "docs" / "openapi.yaml"
CATALOG = REPO / "catalog-info.yaml"
TOOLS = tool_venv.ToolVenv("openapi", "openapi-spec-validator", Path(__file__).with_name("openapi-tools-requirements.txt"))
TOKEN = "openapi-test-token-0123456789"
VERSION, LABEL = 7, "stable"
DOC_URI = "urn:tfxops:openapi"
METHODS = ("get", "post", "put", "delete", "patch")


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(DOC.read_text())


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, pushed_model):
    """One server with a bearer token and the label ``stable`` on version 7."""
    tmp = tmp_path_factory.mktemp("openapi")
    tokens = tmp / "tokens"
    tokens.write_text(f"tester {TOKEN}\n")
    tokens.chmod(0o600)
    settings = serving_settings(tmp, auth_tokens_file=tokens, version_labels=f"{LABEL}={VERSION}")
    copy_version(pushed_model, settings.model_push_dir, VERSION)
    server = BackgroundServer(settings)
    server.start()
    yield f"http://127.0.0.1:{server.ports.rest}"
    server.stop()


def deref(spec: dict, node: dict) -> dict:
    """``node`` with its ``$ref`` (a local JSON pointer) followed."""
    while "$ref" in node:
        target = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def schema_errors(spec: dict, schema: dict, value) -> List[str]:
    """What ``value`` breaks of ``schema`` (a schema of the document, refs resolved in it)."""
    registry = Registry().with_resource(DOC_URI, Resource(contents=spec, specification=DRAFT202012))
    if "$ref" in schema:
        schema = {"$ref": DOC_URI + schema["$ref"]}
    validator = Draft202012Validator(schema, registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


def operations(spec: dict):
    """(path template, method, operation) of every documented operation."""
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def concrete(path: str, model: str = "taxi") -> str:
    return (path.replace("{model_name}", model).replace("{version}", str(VERSION))
            .replace("{label}", LABEL))


def typed_example(row: Dict[str, str]) -> dict:
    out = {}
    for column in F.SERVING_FEATURES:
        value, kind = row.get(column, ""), F.column_type(column)
        if value != "":
            out[column] = float(value) if kind == "float" else int(float(value)) if kind == "int" else value
    return out


V2_DATATYPES = {"float": "FP32", "int": "INT64", "string": "BYTES"}


def v2_body(rows) -> dict:
    """A V2 infer body: the rows' raw model features, one tensor each."""
    complete = [typed_example(r) for r in rows if all(r[c] != "" for c in F.MODEL_FEATURES)]
    return {"id": "openapi", "inputs": [
        {"name": c, "datatype": V2_DATATYPES[F.column_type(c)], "shape": [len(complete)],
         "data": [row[c] for row in complete]} for c in F.MODEL_FEATURES]}


def good_body(path: str, rows) -> dict:
    if path.endswith(":predict"):
        return rest_body(serialize_rows(rows[:3]))
    if path.endswith("/infer"):
        return v2_body(rows)
    return {"examples": [typed_example(r) for r in rows[:3]]}


def check_answer(spec: dict, operation: dict, response: requests.Response, where: str) -> None:
    """The status is documented for the operation and the body matches its schema."""
    documented = operation["responses"]
    assert str(response.status_code) in documented, \
        f"{where}: status {response.status_code} is not documented ({sorted(documented)}): {response.text[:300]}"
    answer = deref(spec, documented[str(response.status_code)])
    if "content" not in answer:      # documented without a body
        assert response.content == b"", f"{where}: a body where none is documented: {response.text[:200]}"
        return
    media = response.headers["Content-Type"].split(";")[0]
    assert media in answer["content"], f"{where}: answered {media}, documented {list(answer['content'])}"
    body = response.json() if media == "application/json" else response.text
    errors = schema_errors(spec, answer["content"][media]["schema"], body)
    assert not errors, f"{where}: the answer does not match the documented schema: {errors}\n{body}"
    for header in answer.get("headers", {}):
        assert header in response.headers, f"{where}: documented header {header} missing"


def call(base: str, method: str, path: str, body=None, token: bool = True, request_id: str = ""):
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    if request_id:
        headers["X-Request-Id"] = request_id
    return requests.request(method.upper(), base + path, json=body, headers=headers, timeout=60)


V1_OPERATIONS = 16     # status and metadata x3, predict/classify/regress x3, metrics
V2_OPERATIONS = 9      # health x2, server metadata, model metadata/ready/infer x2


def test_every_documented_operation_answers_as_documented(spec, guarded, rows):
    """Success with the token; 401 without one (the bearer scheme); 404 for a model
    that does not exist; 400 for an inference body that is not one."""
    ops = list(operations(spec))
    v2 = [p for p, _, _ in ops if p.startswith("/v2")]
    assert len(ops) - len(v2) == V1_OPERATIONS and len(v2) in (0, V2_OPERATIONS), \
        [f"{m.upper()} {p}" for p, m, _ in ops]
    for path, method, operation in ops:
        url = concrete(path)
        body = good_body(path, rows) if method == "post" else None
        response = call(guarded, method, url, body, request_id="openapi-1")
        where = f"{method.upper()} {url}"
        assert response.status_code == 200, f"{where}: {response.status_code} {response.text[:300]}"
        check_answer(spec, operation, response, where)
        if path.startswith(("/v1/", "/v2")):
            assert response.headers["X-Request-Id"] == "openapi-1"
            refused = call(guarded, method, url, body, token=False)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
            check_answer(spec, operation, refused, where + " without a token")
        if "{model_name}" in path:
            missing = call(guarded, method, concrete(path, model="no_such_model"), body)
            assert missing.status_code == 404, f"{where}: {missing.status_code} {missing.text[:200]}"
            check_answer(spec, operation, missing, where + " of an unknown model")
        if method == "post":
            bad = call(guarded, method, url, {"signature_name": "serving_default"})
            assert bad.status_code == 400, f"{where}: {bad.status_code} {bad.text[:200]}"
            check_answer(spec, operation, bad, where + " with a body missing its rows")


def test_predict_answer_shapes_are_the_documented_ones(spec, guarded, rows):
    """Row and columnar predict formats, a raw-feature row, and a wrong answer shape
    (the schema check is not vacuous: a made-up answer fails it)."""
    operation = spec["paths"]["/v1/models/{model_name}:predict"]["post"]
    b64 = rest_body(serialize_rows(rows[:2]))["instances"]
    complete = [r for r in rows if all(r[c] != "" for c in F.MODEL_FEATURES)][:1]
    raw = {k: v for k, v in typed_example(complete[0]).items() if k in F.MODEL_FEATURES}
    for body in ({"instances": b64}, {"inputs": b64}, {"signature_name": "serving_raw", "instances": [raw]}):
        response = call(guarded, "post", "/v1/models/taxi:predict", body)
        assert response.status_code == 200, response.text
        check_answer(spec, operation, response, f"predict {list(body)}")
    schema = deref(spec, operation["responses"]["200"])["content"]["application/json"]["schema"]
    assert schema_errors(spec, schema, {"predictions": [0.5], "outputs": [0.5]})
    assert schema_errors(spec, schema, {"error": "x"})
    classify = deref(spec, spec["paths"]["/v1/models/{model_name}:classify"]["post"]["responses"]["200"])
    assert schema_errors(spec, classify["content"]["application/json"]["schema"], {"results": [[["0", "x"]]]})


def test_routes_the_server_answers_are_documented(spec, guarded):
    """Paths outside the document are refused by the server; if it answers the V2
    protocol (issue 17 part 3), the document must describe it."""
    for path in ("/v1/models/taxi:explain", "/v1/models", "/v1/models/taxi/versions/7/extra", "/healthz"):
        response = call(guarded, "get" if ":" not in path else "post", path, {} if ":" in path else None)
        assert response.status_code in (400, 404, 405), f"{path}: {response.status_code} is answered but not documented"
    served = call(guarded, "get", "/v2/health/ready").status_code == 200
    documented = any(p.startswith("/v2") for p in spec["paths"])
    assert served == documented, ("the server answers the V2 protocol (/v2/...): document its paths "
                                  "in docs/openapi.yaml" if served else
                                  "docs/openapi.yaml documents /v2 paths the server does not answer")


# ------------------------------------------------------------------ the validator (tools venv)
@pytest.fixture(scope="module")
def spec_validator() -> Path:
    """The openapi-spec-validator executable of the tools virtualenv, installed if missing."""
    return tool_venv.ensure(TOOLS) / "bin" / "openapi-spec-validator"


def validate(validator: Path, document: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(validator), str(document)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_document_is_valid_openapi(spec, spec_validator, tmp_path):
    result = validate(spec_validator, DOC)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr
    # a broken copy is refused: a path parameter the operation does not declare,
    # a reference to a schema that does not exist
    broken = copy.deepcopy(spec)
    broken["paths"]["/v1/models/{model_name}/versions/{version}"]["get"]["parameters"] = [
        {"$ref": "#/components/parameters/model_name"}]
    (tmp_path / "undeclared.yaml").write_text(yaml.safe_dump(broken))
    broken = copy.deepcopy(spec)
    broken["components"]["responses"]["Predict"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/NoSuchSchema"}
    (tmp_path / "dangling.yaml").write_text(yaml.safe_dump(broken))
    for name in ("undeclared.yaml", "dangling.yaml"):
        result = validate(spec_validator, tmp_path / name)
        assert result.returncode != 0, f"{name} passed the validator:\n{result.stdout}"


# ------------------------------------------------------------------ catalog-info.yaml
KIND_REF_FIELDS = {"owner": "group", "system": "system", "domain": "domain", "providesApis": "api",
                   "consumesApis": "api", "dependsOn": "component", "dependencyOf": "component"}


def entity_ref(ref: str, default_kind: str) -> str:
    kind, _, name = ref.rpartition(":")
    return f"{(kind or default_kind).lower()}:{name}"


def catalog_problems(entities: List[dict], catalog: Path) -> List[str]:
    """What is wrong with a catalog: an entity without name/owner/lifecycle where Backstage
    needs them, a reference to no entity of the catalog, an API definition that is no file."""
    known = {f"{e['kind'].lower()}:{e['metadata']['name']}" for e in entities}
    problems = []
    for entity in entities:
        me, spec_ = f"{entity['kind']}:{entity['metadata']['name']}", entity.get("spec", {})
        if entity.get("apiVersion") != "backstage.io/v1alpha1":
            problems.append(f"{me}: apiVersion {entity.get('apiVersion')}")
        needs = {"Component": ("type", "lifecycle", "owner"), "API": ("type", "lifecycle", "owner", "definition"),
                 "System": ("owner",), "Resource": ("type", "owner"), "Group": ("type",),
                 "Domain": ("owner",)}.get(entity["kind"], ())
        problems += [f"{me}: spec.{field} missing" for field in needs if not spec_.get(field)]
        for field, kind in KIND_REF_FIELDS.items():
            refs = spec_.get(field, [])
            for ref in [refs] if isinstance(refs, str) else refs:
                if entity_ref(ref, kind) not in known:
                    problems.append(f"{me}: spec.{field} {ref} is no entity of {catalog.name}")
        definition = spec_.get("definition")
        if isinstance(definition, dict) and "$text" in definition:
            target = (catalog.parent / definition["$text"]).resolve()
            if not target.is_file():
                problems.append(f"{me}: definition {definition['$text']} is no file")
    return problems


def test_catalog_describes_the_system_and_its_api(spec):
    entities = [e for e in yaml.safe_load_all(CATALOG.read_text()) if e]
    assert catalog_problems(entities, CATALOG) == []
    by_ref = {f"{e['kind']}:{e['metadata']['name']}": e for e in entities}
    assert by_ref["System:tfxops"]["spec"]["owner"]
    components = {name: by_ref[f"Component:{name}"]["spec"] for name in
                  ("tfxops-pipeline", "tfxops-serving-api", "tfxops-monitor")}
    assert all(c["system"] == "tfxops" and c["lifecycle"] and c["owner"] for c in components.values())
    api = by_ref["API:tfxops-serving-rest"]["spec"]
    assert api["type"] == "openapi" and "api:tfxops-serving-rest" in components["tfxops-serving-api"]["providesApis"]
    definition = (CATALOG.parent / api["definition"]["$text"]).resolve()
    assert definition == DOC.resolve() and yaml.safe_load(definition.read_text()) == spec
    # the checker is not vacuous: a dangling reference and a missing definition are found
    broken = copy.deepcopy(entities)
    for entity in broken:
        if entity["kind"] == "Component":
            entity["spec"]["providesApis"] = ["api:tfxops-grpc"]
        if entity["kind"] == "API":
            entity["spec"]["definition"] = {"$text": "./docs/no-such-openapi.yaml"}
    problems = catalog_problems(broken, CATALOG)
    assert any("api:tfxops-grpc is no entity" in p for p in problems)
    assert any("no-such-openapi.yaml is no file" in p for p in problems)
