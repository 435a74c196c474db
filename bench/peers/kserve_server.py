"""Peer (b) of bench/serving.py: KServe's Python model server (the ``kserve``
package) serving the same SavedModel, as KServe's custom-model guide writes one.

    python kserve_server.py --model_dir DIR --http_port P --grpc_port Q

V1 REST ``POST /v1/models/taxi:predict`` (``{"instances": [{"b64": ...}]}``,
serialized tf.Examples), V2 REST ``POST /v2/models/taxi/infer`` and V2 gRPC
``inference.GRPCInferenceService/ModelInfer``: an input named ``examples``
(BYTES, serialized tf.Examples) goes to ``serving_default``, inputs named after
the raw features to ``serving_raw``. Runs in the peers' virtualenv
(bench/peers/requirements-peers.txt), which holds protobuf 4.
"""
import argparse
import base64
from typing import Dict, Optional, Union

import kserve
import numpy as np
import tensorflow as tf
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid

OUTPUT = "probabilities"


class TaxiModel(kserve.Model):
    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self.model = tf.saved_model.load(self.model_dir)
        self.ready = True
        return self.ready

    def _call(self, signature_name: str, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        signature = self.model.signatures[signature_name]
        specs = signature.structured_input_signature[1]
        tensors = {name: tf.constant(feeds[name], dtype=spec.dtype) for name, spec in specs.items()}
        return signature(**tensors)[OUTPUT].numpy()

    def predict(self, payload: Union[Dict, InferRequest],
                      headers: Optional[Dict[str, str]] = None) -> Union[Dict, InferResponse]:
        if isinstance(payload, InferRequest):
            feeds = {inp.name: inp.as_numpy() for inp in payload.inputs}
            signature = "serving_default" if "examples" in feeds else "serving_raw"
            scores = self._call(signature, feeds)
            output = InferOutput(name=OUTPUT, shape=list(scores.shape), datatype="FP32")
            output.set_data_from_numpy(scores, binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[output],
                                 response_id=payload.id or generate_uuid())
        examples = [base64.b64decode(item["b64"]) for item in payload["instances"]]
        return {"predictions": self._call("serving_default", {"examples": examples}).tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    kserve.ModelServer().start([TaxiModel("taxi", args.model_dir)])
