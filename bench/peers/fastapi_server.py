"""Peer (a) of bench/serving.py: the server most users write around a SavedModel,
FastAPI + uvicorn with TF Serving's REST shape, run as it is usually run.

    python fastapi_server.py MODEL_DIR PORT

``POST /v1/models/taxi:predict`` takes ``{"instances": [{"b64": ...}, ...]}``
(serialized tf.Examples, ``serving_default``) or, with ``"signature_name":
"serving_raw"``, rows of raw features; it answers ``{"predictions": [...]}``.
``GET /v1/models/taxi`` answers once the model is loaded. Runs in the peers'
virtualenv (bench/peers/requirements-peers.txt), not in the project's.
"""
import base64
import sys
from typing import Any, Dict, List

import tensorflow as tf
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

model = tf.saved_model.load(sys.argv[1])
app = FastAPI()


class PredictRequest(BaseModel):
    instances: List[Any]
    signature_name: str = "serving_default"


@app.get("/v1/models/taxi")
def status() -> Dict[str, Any]:
    return {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}


@app.post("/v1/models/taxi:predict")
def predict(request: PredictRequest) -> Dict[str, Any]:
    signature = model.signatures[request.signature_name]
    if request.signature_name == "serving_default":
        examples = [base64.b64decode(item["b64"]) for item in request.instances]
        outputs = signature(examples=tf.constant(examples))
    else:
        specs = signature.structured_input_signature[1]
        outputs = signature(**{name: tf.constant([row[name] for row in request.instances],
                                                 dtype=spec.dtype)
                               for name, spec in specs.items()})
    return {"predictions": outputs["probabilities"].numpy().tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
