"""What the V2 REST and gRPC front ends share: the model, version and signature a V2
call runs, its inputs checked and decoded for that signature, its record in the
request log, model metadata and readiness.

A V2 model is one signature of a served SavedModel: the one the call names in its
``parameters`` (``"signature_name"``), else ``serving_raw`` (one tensor per raw
feature, named as in ``core.features``: what V2 clients send) when the version has
it, else ``serving_default``. Model metadata lists that signature's inputs and
outputs with V2 datatypes and shapes.

A V2 inference is a predict call of that signature through ``ServingApi.predict``,
so it passes the same checks (out-of-domain, tensor budget), is counted in the same
metrics and is logged as a PredictRequest/PredictResponse of the signature, read by
the monitor as any other predict call.
"""
import importlib.metadata
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tensorflow_serving.apis import predict_pb2

from core import features as F
from serving.api import Call, ServingApi, fill_model_spec
from serving.errors import ServingError, invalid
from serving.model_set import ModelSet
from serving.models import AVAILABLE, ModelVersion, Signature
from serving.tensors import ndarray_to_proto
from serving.v2.tensors import DeclaredInput, tensor_metadata

SERVER_NAME = "tfxops"
PLATFORM = "tensorflow_savedmodel"
SIGNATURE_PARAMETER = "signature_name"     # a request parameter naming the signature to run
BINARY_EXTENSION = "binary_tensor_data"    # REST: tensors as raw bytes after the JSON header

Decode = Callable[[DeclaredInput], np.ndarray]


def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": importlib.metadata.version("tfxops"),
            "extensions": [BINARY_EXTENSION]}


def parse_version(text: Optional[str]) -> Optional[int]:
    """A V2 model version (a string) as the push directory's version number (None:
    the latest); INVALID_ARGUMENT for anything else."""
    if not text:
        return None
    if len(text) > 19 or not text.isdigit():
        raise invalid(f"model version '{text[:40]}' is not a version number: the versions "
                      f"are the numbered directories the model was pushed to")
    return int(text)


def default_signature(loaded: ModelVersion) -> str:
    """The signature a V2 call runs when it names none."""
    return F.RAW_SIGNATURE if F.RAW_SIGNATURE in loaded.signatures else F.DEFAULT_SIGNATURE


def signature_to_run(api: ServingApi, call: Call, requested) -> str:
    """The signature ``call`` runs: ``requested`` (the request's ``signature_name``
    parameter) when given, else the default of the version it names."""
    if requested is not None:
        if not isinstance(requested, str) or not requested:
            raise invalid(f"parameter '{SIGNATURE_PARAMETER}' must be a signature's name "
                          f"(a non-empty string)")
        return requested
    with api.runner.use_version(call.model_name, call.version, None) as loaded:
        return default_signature(loaded)


class V2Inference:
    """One V2 inference call: its ``Call``, the inputs it declares with how to decode
    each, and what was decoded (for its log record)."""
    __slots__ = ("call", "inputs", "budget", "feeds", "response_id")

    def __init__(self, call: Call, inputs: Sequence[Tuple[DeclaredInput, Decode]],
                 budget: int, response_id: str):
        self.call, self.inputs, self.budget = call, inputs, budget
        self.response_id = response_id        # the request's "id", or the request id logged
        self.feeds: Optional[Dict[str, np.ndarray]] = None

    def feeds_for(self, signature: Signature) -> Dict[str, np.ndarray]:
        """The inputs, checked against ``signature`` and decoded (``ServingApi.predict``)."""
        feeds, budget = {}, self.budget
        for declared, decode in self.inputs:
            declared.check(signature, budget)
            if declared.name in feeds:
                raise invalid(f"input '{declared.name}' is sent twice")
            array = declared.shaped(decode(declared))
            budget -= array.nbytes if array.dtype != object else array.size
            feeds[declared.name] = array
        self.feeds = feeds
        return feeds

    async def run(self, api: ServingApi, requested_signature,
                  output_filter: Sequence[str]) -> Dict[str, np.ndarray]:
        self.call.signature_name = signature_to_run(api, self.call, requested_signature)
        return await api.predict(self.call, self.feeds_for, output_filter)

    def exchange(self, outputs: Dict[str, np.ndarray]):
        """The answered call as the PredictRequest/PredictResponse its log record holds."""
        request = self.received()
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        specs = self.call.signature.outputs
        for alias, array in outputs.items():
            ndarray_to_proto(array, specs[alias].dtype, response.outputs[alias])
        return request, response

    def received(self) -> Optional[predict_pb2.PredictRequest]:
        """What the call sent as a PredictRequest of its signature (None: its inputs
        were not decoded)."""
        if self.feeds is None or self.call.signature is None:
            return None
        request = predict_pb2.PredictRequest()
        fill_model_spec(request.model_spec, self.call)
        specs = self.call.signature.inputs
        for alias, array in self.feeds.items():
            ndarray_to_proto(array, specs[alias].dtype, request.inputs[alias])
        return request


def requested_outputs(names: Sequence) -> List[str]:
    """The output names a request asks for ([]: all of them)."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise invalid("every requested output needs a 'name' (a string)")
    return list(names)


# ---------------------------------------------------------------- metadata and health
def model_metadata(api: ServingApi, models: ModelSet, name: str, version: Optional[int]) -> dict:
    """The V2 model metadata of ``name`` (the version ``version``, None: the latest)."""
    with api.runner.use_version(name, version, None) as loaded:
        signature = loaded.signatures.get(default_signature(loaded))
        if signature is None:
            raise ServingError("FAILED_PRECONDITION", f"model {name} has neither a "
                               f"{F.RAW_SIGNATURE} nor a {F.DEFAULT_SIGNATURE} signature: "
                               f"send parameters {{\"{SIGNATURE_PARAMETER}\": ...}} with "
                               f"each inference")
        return {"name": name, "versions": available_versions(models, name),
                "platform": PLATFORM, "inputs": tensor_metadata(signature.inputs),
                "outputs": tensor_metadata(signature.outputs)}


def available_versions(models: ModelSet, name: str) -> List[str]:
    return sorted((str(s.version) for s in models.status(name) if s.state == AVAILABLE),
                  key=int)


def model_ready(models: ModelSet, name: str, version: Optional[int]) -> bool:
    """Whether ``name`` (version ``version``, None: any) is AVAILABLE; NOT_FOUND for a
    model or version the server does not know."""
    return any(s.state == AVAILABLE for s in models.status(name, version, None))


def server_ready(models: ModelSet) -> bool:
    """Whether every served model has a version AVAILABLE (a model with no version
    yet: not ready)."""
    for name in models.names():
        try:
            if not model_ready(models, name, None):
                return False
        except ServingError:
            return False
    return True
