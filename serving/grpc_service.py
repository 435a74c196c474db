"""TF Serving's gRPC API on grpc.aio: ``PredictionService`` (Predict, Classify,
Regress, GetModelMetadata; MultiInference answers UNIMPLEMENTED) and
``ModelService.GetModelStatus``, registered with the tensorflow-serving-api stubs so
TF Serving's own clients work unchanged.

The request id logged with a request is the caller's ``x-request-id`` metadata,
returned in the trailing metadata under the same key, or, when the caller sent
none, one made up for the log. A caller that sends none (every TF Serving client)
gets TF Serving's exact answer, no extra metadata: a made-up id sent back costs
the server about 0.05 ms of CPU per request, 5-8% of gRPC throughput at 32
clients in an A/B run here, for an id such a client does not read.
"""
import functools
import time
from typing import Callable, Optional

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from serving import request_log, wire
from serving.request_log import new_request_id
from serving.errors import ServingError, internal_error, invalid
from serving.service import Inference
from serving.tensors import protos_to_arrays

REQUEST_ID_KEY = "x-request-id"


def _sent_request_id(context) -> Optional[str]:
    """The caller's ``x-request-id`` (at most 128 characters), or None."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:128]
    return None


def _return_request_id(context, sent: Optional[str]) -> None:
    if sent:
        context.set_trailing_metadata(((REQUEST_ID_KEY, sent),))


def _spec(model_spec):
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version, model_spec.version_label or None


def _fill_spec(out_spec, name: str, version: int, signature_name: str):
    out_spec.name = name
    out_spec.version.value = version
    out_spec.signature_name = signature_name


def serialized_input(inp) -> list:
    """Input.example_list[_with_context] as serialized tf.Examples (context merged
    by concatenation: the example's own features win, as in TF Serving)."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in inp.example_list.examples]
    if kind == "example_list_with_context":
        context = inp.example_list_with_context.context.SerializeToString()
        return [context + e.SerializeToString() for e in inp.example_list_with_context.examples]
    raise invalid("Input is empty.")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, inference: Inference):
        self.inf = inference

    async def _fail(self, context, call: "_Call", err: ServingError):
        """Answer ``err``; count it, and log the call as rejected (what the caller
        sent, the code and message), as the REST API does."""
        inf = self.inf
        inf.record(call.name, call.api, "GRPC", call.started, err.code)
        if request_log.logs_rejection(call.api, err.code) and inf.sampled():
            inf.log(functools.partial(call.rejected_record, err))
        await context.abort(err.grpc_code, err.message)

    async def Predict(self, request, context):
        """The servicer API: a PredictRequest in, a PredictResponse out."""
        response = await self._predict(request, None, context)
        return None if response is None else predict_pb2.PredictResponse.FromString(response)

    async def _predict_wire(self, parsed, context):
        """Predict as registered on the server: the request arrives with its wire
        bytes and the response leaves as bytes built here (``serving.wire``), so
        the request log reuses both instead of copying and re-serializing them."""
        request, raw = parsed
        return await self._predict(request, raw, context)

    async def _predict(self, request, raw: Optional[bytes], context) -> Optional[bytes]:
        call = _Call.of(request, "predict", context, raw)
        inf = self.inf
        try:
            with inf.holding(call.name, call.version, call.label) as loaded:
                call.version = loaded.version
                sig = inf.signature(loaded, call.signature)
                feeds = protos_to_arrays(request.inputs, inf.max_tensor_bytes)
                outputs = await inf.predict(loaded, sig, feeds, request.output_filter)
        except Exception as exc:   # noqa: BLE001 - every failure is answered, counted, logged
            await self._fail(context, call, _serving_error(exc, call))
            return None
        spec = sig.outputs
        response = wire.predict_response_bytes(
            wire.model_spec_bytes(call.name, loaded.version, sig.name),
            [(alias, wire.tensor_bytes(array, spec[alias].dtype))
             for alias, array in outputs.items()])
        _return_request_id(context, call.sent_id)
        inf.record(call.name, "predict", "GRPC", call.started)
        if inf.sampled():
            inf.log(functools.partial(
                request_log.encode_log, "predict", call.name, loaded.version, sig.name,
                call.request_id, call.arrived, request if raw is None else raw, response))
        return response

    async def _classify_or_regress(self, request, context, kind: str):
        call = _Call.of(request, kind, context)
        try:
            with self.inf.holding(call.name, call.version, call.label) as loaded:
                call.version = loaded.version
                sig = self.inf.signature(loaded, call.signature)
                serialized = serialized_input(request.input)
                result = await self.inf.classify_or_regress(loaded, sig, serialized, kind)
        except Exception as exc:   # noqa: BLE001 - every failure is answered, counted, logged
            await self._fail(context, call, _serving_error(exc, call))
            return None
        if kind == "classify":
            response = classification_pb2.ClassificationResponse()
            fill_classifications(response.result, *result)
        else:
            response = regression_pb2.RegressionResponse()
            for value in result.tolist():
                response.result.regressions.add().value = value
        _fill_spec(response.model_spec, call.name, loaded.version, sig.name)
        _return_request_id(context, call.sent_id)
        self.inf.record(call.name, kind, "GRPC", call.started)
        if self.inf.sampled():
            self.inf.log(functools.partial(request_log.encode_log, kind, call.name,
                                           loaded.version, sig.name, call.request_id,
                                           call.arrived, request, response))
        return response

    async def Classify(self, request, context):
        return await self._classify_or_regress(request, context, "classify")

    async def Regress(self, request, context):
        return await self._classify_or_regress(request, context, "regress")

    async def MultiInference(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "MultiInference is not supported by tfxops serve")

    async def GetModelMetadata(self, request, context):
        call = _Call.of(request, "metadata", context)
        try:
            response = model_metadata(self.inf, call.name, call.version, call.label,
                                      list(request.metadata_field))
        except ServingError as err:
            await self._fail(context, call, err)
            return None
        self.inf.record(call.name, "metadata", "GRPC", call.started)
        return response


def _serving_error(exc: Exception, call: "_Call") -> ServingError:
    """``exc`` as the caller sees it: a ServingError as it is, anything else INTERNAL
    (its traceback in the server's log)."""
    if isinstance(exc, ServingError):
        return exc
    return internal_error(f"answering a gRPC {call.api} call")


class _Call:
    """What is known of one gRPC call, for its answer, metrics and log record."""
    __slots__ = ("request", "raw", "api", "started", "arrived", "sent_id", "request_id",
                 "name", "version", "label", "signature")

    @classmethod
    def of(cls, request, api: str, context, raw: Optional[bytes] = None) -> "_Call":
        call = cls()
        call.request, call.raw, call.api = request, raw, api
        call.started, call.arrived = time.perf_counter(), time.time()
        call.sent_id = _sent_request_id(context)
        call.request_id = call.sent_id or new_request_id()
        call.name, call.version, call.label = _spec(request.model_spec)
        call.signature = request.model_spec.signature_name
        return call

    @classmethod
    def unparseable(cls, api: str, context) -> "_Call":
        call = cls()
        call.request, call.raw, call.api = None, None, api
        call.started, call.arrived = time.perf_counter(), time.time()
        call.sent_id = _sent_request_id(context)
        call.request_id = call.sent_id or new_request_id()
        call.name, call.version, call.label, call.signature = "", None, None, ""
        return call

    def rejected_record(self, err: ServingError) -> bytes:
        """The call's rejected-call log record (built on the log writer's thread)."""
        return request_log.encode_rejected(self.name, self.version, self.signature,
                                           self.request_id, self.arrived, err.code,
                                           err.message, self.received())

    def received(self):
        """The request as a PredictRequest (or its bytes) for the rejected-call log."""
        if self.request is None:
            return None
        if self.api == "predict":
            return self.request if self.raw is None else self.raw
        try:
            return request_log.examples_request(serialized_input(self.request.input))
        except ServingError:
            return None


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, inference: Inference):
        self.inf = inference

    async def GetModelStatus(self, request, context):
        name, version, label = _spec(request.model_spec)
        try:
            return model_status(self.inf, name, version, label)
        except ServingError as err:
            await context.abort(err.grpc_code, err.message)

    async def HandleReloadConfigRequest(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "tfxops serve is configured by tfxops settings, not ReloadConfig")


# ------------------------------------------------------------------ shared builders
def fill_classifications(result, classes, scores) -> None:
    n = len(classes) if classes is not None else len(scores)
    for i in range(n):
        cls = result.classifications.add()
        k = (classes.shape[1] if classes is not None else scores.shape[1])
        for j in range(k):
            c = cls.classes.add()
            if classes is not None:
                value = classes[i, j]
                c.label = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if scores is not None:
                c.score = float(scores[i, j])


def model_status(inf: Inference, name: str, version: Optional[int], label: Optional[str]):
    response = get_model_status_pb2.GetModelStatusResponse()
    for st in inf.manager.status(name, version, label):
        item = response.model_version_status.add()
        item.version = st.version
        item.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
        from tensorflow.core.protobuf import error_codes_pb2
        item.status.error_code = error_codes_pb2.Code.Value(st.error_code)
        item.status.error_message = st.error_message
    return response


def model_metadata(inf: Inference, name: str, version: Optional[int], label: Optional[str],
                   fields=("signature_def",)):
    for field in fields:
        if field != "signature_def":
            raise invalid(f"Metadata field {field} is not supported")
    if not fields:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    with inf.holding(name, version, label) as loaded:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, name, loaded.version, "")
        response.model_spec.ClearField("signature_name")
        response.metadata["signature_def"].Pack(loaded.signature_def_map())
        return response


class _Unparseable:
    """What a request deserializes to when its bytes are not the method's message."""
    __slots__ = ("type_name",)

    def __init__(self, type_name: str):
        self.type_name = type_name


def _tolerant(parse: Callable, request_type) -> Callable:
    """A request deserializer that never raises (gRPC would answer UNKNOWN with
    the parser's exception text): bad bytes become ``_Unparseable``."""
    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception:   # noqa: BLE001 - any parser failure: the caller sent bad bytes
            return _Unparseable(request_type.DESCRIPTOR.full_name)
    return deserialize


def _guarded(method: Callable, api: str, servicer: Optional[PredictionServicer]) -> Callable:
    """``method`` answering INVALID_ARGUMENT to unparseable requests and INTERNAL
    (traceback to the server's log only) to anything it did not expect."""
    async def handle(request, context):
        if isinstance(request, _Unparseable):
            err = invalid(f"Could not parse the request: its bytes are not a "
                          f"{request.type_name}")
            if servicer is not None:
                return await servicer._fail(context, _Call.unparseable(api, context), err)  # noqa: SLF001
            await context.abort(err.grpc_code, err.message)
        try:
            return await method(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception:   # noqa: BLE001
            err = internal_error(f"answering a gRPC {api} call")
            await context.abort(err.grpc_code, err.message)
    return handle


def _parse_predict(data: bytes):
    return predict_pb2.PredictRequest.FromString(data), data


def _serialize(message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_to_server(server, inference: Inference) -> None:
    """TF Serving's PredictionService and ModelService (same service and method
    names, so every TF Serving client works unchanged), with Predict taking its
    request with the wire bytes and answering bytes (``PredictionServicer._predict_wire``)
    and every method ``_guarded``."""
    from tensorflow_serving.apis import inference_pb2, model_management_pb2

    predictions = PredictionServicer(inference)
    models = ModelServicer(inference)

    def handler(method, api, request_type, response_type, parse=None, servicer=predictions):
        return grpc.unary_unary_rpc_method_handler(
            _guarded(method, api, servicer),
            request_deserializer=_tolerant(parse or request_type.FromString, request_type),
            response_serializer=_serialize)

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {
            "Classify": handler(predictions.Classify, "classify",
                                classification_pb2.ClassificationRequest,
                                classification_pb2.ClassificationResponse),
            "Regress": handler(predictions.Regress, "regress", regression_pb2.RegressionRequest,
                               regression_pb2.RegressionResponse),
            "Predict": handler(predictions._predict_wire, "predict",   # noqa: SLF001
                               predict_pb2.PredictRequest, predict_pb2.PredictResponse,
                               parse=_parse_predict),
            "MultiInference": handler(predictions.MultiInference, "multi_inference",
                                      inference_pb2.MultiInferenceRequest,
                                      inference_pb2.MultiInferenceResponse),
            "GetModelMetadata": handler(predictions.GetModelMetadata, "metadata",
                                        get_model_metadata_pb2.GetModelMetadataRequest,
                                        get_model_metadata_pb2.GetModelMetadataResponse),
        }), grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": handler(models.GetModelStatus, "status",
                                      get_model_status_pb2.GetModelStatusRequest,
                                      get_model_status_pb2.GetModelStatusResponse,
                                      servicer=None),
            "HandleReloadConfigRequest": handler(
                models.HandleReloadConfigRequest, "reload",
                model_management_pb2.ReloadConfigRequest,
                model_management_pb2.ReloadConfigResponse, servicer=None),
        })))


__all__ = ["add_to_server", "PredictionServicer", "ModelServicer", "prediction_log_pb2"]
