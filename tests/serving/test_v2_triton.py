"""An independent V2 client: NVIDIA's tritonclient (HTTP with binary tensor data, and
gRPC, their defaults) against a real ``tfxops serve`` process serving the pipeline's
pushed taxi model. tritonclient needs protobuf 6, so it runs in its own virtualenv
(pins in triton-tools-requirements.txt, built once under .cache/tools-venv-triton),
as a subprocess (triton_v2_client.py)."""
import json
import subprocess
from pathlib import Path

import pytest
import requests

from core import features as F, request_log
from tests import tool_venv
from tests.serving.conftest import copy_version, serving_settings
from tests.serving.serve_proc import ServeProcess, until
from tests.serving.v2_calls import V2_TYPES, complete_rows

pytestmark = pytest.mark.slow

TOOLS = tool_venv.ToolVenv("triton", "tritonclient", Path(__file__).with_name("triton-tools-requirements.txt"))
CLIENT = Path(__file__).with_name("triton_v2_client.py")


@pytest.fixture(scope="module")
def triton_python() -> Path:
    """The Python of the tritonclient virtualenv, installed if missing or its pins changed."""
    return tool_venv.ensure(TOOLS) / "bin" / "python"


def test_tritonclient_http_and_grpc(tmp_path, pushed_model, taxi_rows, triton_python):
    settings = serving_settings(tmp_path, log_rotate_records=1)
    copy_version(pushed_model, settings.model_push_dir, 3)
    trips = complete_rows(taxi_rows, 4)
    job = {"http": f"127.0.0.1:{settings.rest_port}", "grpc": f"127.0.0.1:{settings.grpc_port}",
           "columns": {name: [row[name] for row in trips] for name in F.MODEL_FEATURES},
           "datatypes": {name: V2_TYPES[F.column_type(name)] for name in F.MODEL_FEATURES}}
    with ServeProcess(settings, tmp_path / "home") as server:
        want = requests.post(f"http://127.0.0.1:{settings.rest_port}/v1/models/taxi:predict", timeout=60,
                             json={"signature_name": F.RAW_SIGNATURE, "instances": trips}).json()["predictions"]
        client = subprocess.run([str(triton_python), str(CLIENT)], input=json.dumps(job),
                                capture_output=True, text=True, timeout=300)
        assert client.returncode == 0, client.stderr[-5000:] + server.log()[-5000:]
        answers = json.loads(client.stdout)
        for protocol in ("http", "grpc"):
            got = answers[protocol]
            assert (got["live"], got["ready"], got["model_ready"]) == (True, True, True), protocol
            assert got["metadata"]["versions"] == ["3"] and got["metadata"]["inputs"] == [
                {"name": name, "datatype": V2_TYPES[F.RAW_FEATURE_TYPES[name]], "shape": [-1]}
                for name in sorted(F.MODEL_FEATURES)], protocol
            assert got["probabilities"] == pytest.approx(want, abs=1e-6), protocol
            assert got["id"] == f"triton-tritonclient.{protocol}"
            assert got["unknown_model"] == "Servable not found for request: Latest(nope)"
            assert got["wrong_datatype"].startswith("input 'trip_miles' has datatype FP64, but "
                                                    "signature serving_raw takes FP32"), got
        # both clients' calls are in the request log, as predict calls of serving_raw
        ids = {"triton-tritonclient.http", "triton-tritonclient.grpc"}

        def logged():
            found = {r.request_id: r for r in request_log.read_request_log(
                request_log.closed_log_files(settings.request_logs_path))}
            return found if ids <= set(found) else None
        records = until(logged, "tritonclient's calls logged")
    for rid in ids:
        assert records[rid].signature_name == F.RAW_SIGNATURE and records[rid].model_version == 3
        assert records[rid].predictions == pytest.approx(want, abs=1e-6)
