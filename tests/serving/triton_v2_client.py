"""Run by the tritonclient virtualenv's Python (tests/serving/test_v2_triton.py), not
by pytest: NVIDIA's V2 clients (tritonclient.http and tritonclient.grpc, their
defaults: binary tensor data over HTTP, raw contents over gRPC) against a running
``tfxops serve``. Reads {"http": "host:port", "grpc": "host:port", "columns":
{name: [values]}, "datatypes": {name: V2 type}} on stdin; prints what each client
got as JSON."""
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NUMPY = {"FP32": np.float32, "INT64": np.int64, "BYTES": np.object_}


def inputs(module, job):
    out = []
    for name, values in job["columns"].items():
        kind = job["datatypes"][name]
        array = np.array([v.encode() for v in values] if kind == "BYTES" else values,
                         dtype=NUMPY[kind])
        tensor = module.InferInput(name, [len(values)], kind)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def error(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return exc.message()
    return ""


def session(module, client, job) -> dict:
    metadata = client.get_model_metadata("taxi")
    metadata = metadata if isinstance(metadata, dict) else {
        "name": metadata.name, "versions": list(metadata.versions), "platform": metadata.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.inputs]}
    result = client.infer("taxi", inputs(module, job), request_id=f"triton-{module.__name__}",
                          outputs=[module.InferRequestedOutput("probabilities")])
    wrong = inputs(module, job)
    wrong[0] = module.InferInput(wrong[0].name(), [1], "FP64")
    wrong[0].set_data_from_numpy(np.array([1.0]))
    return {"live": client.is_server_live(), "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("taxi"), "metadata": metadata,
            "probabilities": result.as_numpy("probabilities").tolist(),
            "id": result.get_response()["id"] if module is httpclient else result.get_response().id,
            "unknown_model": error(lambda: client.infer("nope", inputs(module, job))),
            "wrong_datatype": error(lambda: client.infer("taxi", wrong))}


def main():
    job = json.load(sys.stdin)
    http = httpclient.InferenceServerClient(job["http"])
    grpc = grpcclient.InferenceServerClient(job["grpc"])
    answers = {"http": session(httpclient, http, job), "grpc": session(grpcclient, grpc, job)}
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
