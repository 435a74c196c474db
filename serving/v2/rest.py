"""The Open Inference Protocol's REST API (KServe V2), on the REST port of ``tfxops
serve`` beside TF Serving's:

    GET  /v2/health/live | /v2/health/ready                  200 (true), 400 (false)
    GET  /v2                                                 server metadata
    GET  /v2/models/{name}[/versions/{v}]                    model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready              200 (true), 400 (false)
    POST /v2/models/{name}[/versions/{v}]/infer              inference

Bodies as ``required_api.md`` of KServe's predict-api/v2 defines them, failures
``{"error": message}`` with the HTTP status of their code. Also Triton's binary
tensor data extension (what ``tritonclient.http`` sends by default): the header
``Inference-Header-Content-Length`` gives the JSON's length, an input with the
parameter ``binary_data_size`` has its elements in the bytes after it, in input
order; an output asked for with ``"binary_data": true`` (or every output, with the
request parameter ``binary_data_output``) is answered likewise.

Every call passes the checks of TF Serving's API (``serving.access`` tokens and rate
limit, for health too; for inference also the admission gate and
``max_request_bytes``: its handler is a ``serving.rest.InferenceHandler``), and an
inference is counted and logged through ``ServingApi`` (``serving.v2.infer``).
"""
import functools
from typing import List, Optional, Tuple

from serving.api import REST, Call
from serving.errors import ServingError, internal_error, invalid
from serving.rest import InferenceHandler, StatusHandler, dumps, parse_json
from serving.v2 import infer as V
from serving.v2.tensors import (DeclaredInput, json_elements, json_output, output_datatype,
                                raw_bytes, raw_elements)

HEADER_LENGTH = "Inference-Header-Content-Length"   # the binary extension's JSON length
BINARY_SIZE = "binary_data_size"                    # an input's or output's bytes after the JSON
_MODEL = r"/v2/models/([^/]+)(?:/versions/([^/]+))?"


class _Metadata(StatusHandler):
    """A V2 GET: checked by ``serving.access`` (``StatusHandler.prepare``); ``answer()``
    is the JSON body (None: 200 with no body), a ServingError its ``{"error": ...}``.
    ``models``: the served models (the server's ModelSet)."""

    def initialize(self, models, **args):
        super().initialize(**args)
        self.models = models

    def answer(self, *path_args) -> Optional[dict]:
        raise NotImplementedError

    async def get(self, *path_args):
        try:
            body = self.answer(*path_args)
        except ServingError as err:
            return self.send_error_json(err)
        if body is None:
            self.finish()
        else:
            self.send_json(body)

    def health(self, ready: bool) -> None:
        """A health answer: 200 (true) or 400 (false), no body."""
        if not ready:
            self.set_status(400)


class LiveHandler(_Metadata):
    def answer(self):
        return None


class ServerReadyHandler(_Metadata):
    def answer(self):
        self.health(V.server_ready(self.models))


class ModelReadyHandler(_Metadata):
    def answer(self, name, version):
        self.health(V.model_ready(self.models, name,
                                  V.parse_version(version)))


class ServerMetadataHandler(_Metadata):
    def answer(self):
        return V.server_metadata()


class ModelMetadataHandler(_Metadata):
    def answer(self, name, version):
        return V.model_metadata(self.api, self.models, name,
                                V.parse_version(version))


class InferHandler(InferenceHandler):
    """POST .../infer: the body read (and refused past ``max_request_bytes``) and the
    call admitted (tokens, rate limit, gate) as TF Serving's inference calls are."""

    def refused(self, refusal: ServingError):
        self.api.rejected(Call("predict", REST, self.request_id, self.path_args[0],
                               client=self.client), refusal)

    async def post(self, name, version):
        if self._too_large:
            return
        call = Call("predict", REST, self.request_id, name, client=self.client)
        inference = None
        try:
            doc, inference, choices = self._inference(call, version)
            outputs = await inference.run(self.api, _parameters(doc).get(V.SIGNATURE_PARAMETER),
                                          V.requested_outputs([o.get("name") for o in choices[0]]))
            body, header_length = _answer(inference, outputs, choices)
        except Exception as exc:   # noqa: BLE001 - every failure is answered, counted, logged
            err = exc if isinstance(exc, ServingError) else internal_error(
                f"answering POST {self.request.path[:200]}")
            self.api.rejected(call, err, inference.received if inference is not None else None)
            return self.send_error_json(err)
        if header_length is not None:
            self.set_header(HEADER_LENGTH, str(header_length))
            self.set_header("Content-Type", "application/octet-stream")
        self.finish(body)
        self.api.answered(call, functools.partial(inference.exchange, outputs))

    def _inference(self, call: Call, version: Optional[str]):
        """(the request's JSON, its V2Inference, (its requested outputs, the names of
        those answered as binary data, whether all are))."""
        doc, binary = _split_body(b"".join(self._chunks),
                                  self.request.headers.get(HEADER_LENGTH))
        call.version = V.parse_version(version)
        request_id = doc.get("id")
        if isinstance(request_id, str) and request_id:
            call.request_id = request_id[:128]
        inference = V.V2Inference(call, _declared_inputs(doc, binary),
                                  self.api.runner.max_tensor_bytes, call.request_id)
        return doc, inference, _output_choices(doc)


def _parameters(entry: dict) -> dict:
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid("'parameters' must be an object of name: value")
    return parameters


def _split_body(body: bytes, header_length: Optional[str]) -> Tuple[dict, bytes]:
    """The request's JSON and the binary data after it (binary tensor data extension)."""
    if header_length is None:
        return parse_json(body), b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise invalid(f"header {HEADER_LENGTH} must be the length of the JSON at the start of "
                      f"the body (at most its {len(body)} bytes)")
    length = int(header_length)
    return parse_json(body[:length]), body[length:]


def _declared_inputs(doc: dict, binary: bytes) -> List[tuple]:
    """(DeclaredInput, how to decode its elements) of each of the request's inputs."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("the request needs 'inputs': a list of tensors, each with name, shape, "
                      "datatype and data")
    declared, position = [], 0
    for entry in inputs:
        if not isinstance(entry, dict):
            raise invalid("each of 'inputs' must be an object with name, shape, datatype, data")
        tensor = DeclaredInput(entry.get("name"), entry.get("datatype"), entry.get("shape"))
        size = _parameters(entry).get(BINARY_SIZE)
        if size is None:
            if "data" not in entry:
                raise invalid(f"input '{tensor.name}' has no 'data'")
            declared.append((tensor, functools.partial(_from_json, entry["data"])))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or \
                not 0 <= size <= len(binary) - position:
            raise invalid(f"input '{tensor.name}': parameter {BINARY_SIZE} is not the size of "
                          f"its data in the {len(binary) - position} bytes left after the JSON")
        declared.append((tensor, functools.partial(_from_raw, binary[position:position + size])))
        position += size
    if position != len(binary):
        raise invalid(f"{len(binary) - position} bytes after the JSON belong to no input "
                      f"(the inputs' {BINARY_SIZE} add up to {position})")
    return declared


def _from_json(data, tensor: DeclaredInput):
    return json_elements(tensor, data)


def _from_raw(raw: bytes, tensor: DeclaredInput):
    return raw_elements(tensor, raw)


def _output_choices(doc: dict) -> Tuple[list, set, bool]:
    """(the requested outputs, the names of those to answer as binary data, whether
    every output is: the request parameter ``binary_data_output``)."""
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise invalid("'outputs' must be a list of objects, each with a name")
    binary = {o.get("name") for o in outputs if _parameters(o).get("binary_data") is True}
    return outputs, binary, _parameters(doc).get("binary_data_output") is True


def _answer(inference: V.V2Inference, outputs, choices) -> Tuple[bytes, Optional[int]]:
    """The response body, and the length of its JSON when binary data follows it."""
    _, binary, all_binary = choices
    call = inference.call
    specs = call.signature.outputs
    entries, blobs = [], []
    for alias, array in outputs.items():
        v2_type = output_datatype(alias, specs[alias].dtype)
        if all_binary or alias in binary:
            blobs.append(raw_bytes(array, v2_type))
            entries.append({"name": alias, "datatype": v2_type, "shape": list(array.shape),
                            "parameters": {BINARY_SIZE: len(blobs[-1])}})
        else:
            entries.append(json_output(alias, array, v2_type))
    body = dumps({"model_name": call.model_name, "model_version": str(call.version),
                  "id": inference.response_id, "outputs": entries})
    if not blobs:
        return body, None
    return body + b"".join(blobs), len(body)


def add_to_app(app, api, max_request_bytes: int, access, models) -> None:
    """Add the V2 routes to ``app`` (``serving.rest.make_app``'s): after TF Serving's
    (whose requests are routed as before, without trying these), before the
    catch-all answering unknown paths; ``models``: the served models (the server's
    ModelSet)."""
    args = dict(api=api, max_request_bytes=max_request_bytes, access=access)
    with_models = dict(args, models=models)
    rules = app.wildcard_router.rules
    catch_all = rules.pop()
    app.wildcard_router.add_rules([(r"/v2/health/live", LiveHandler, with_models),
                                   (r"/v2/health/ready", ServerReadyHandler, with_models),
                                   (r"/v2", ServerMetadataHandler, with_models),
                                   (_MODEL + r"/ready", ModelReadyHandler, with_models),
                                   (_MODEL + r"/infer", InferHandler, args),
                                   (_MODEL, ModelMetadataHandler, with_models)])
    rules.append(catch_all)
