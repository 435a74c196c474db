"""TF Serving's gRPC API on grpc.aio: ``PredictionService`` (Predict, Classify,
Regress, GetModelMetadata; MultiInference answers UNIMPLEMENTED) and
``ModelService.GetModelStatus``, registered with the tensorflow-serving-api stubs so
TF Serving's own clients work unchanged.

The request id logged with a request is the caller's ``x-request-id`` metadata,
returned in the trailing metadata under the same key, or, when the caller sent
none, one made up for the log. A caller that sends none (every TF Serving client)
gets TF Serving's exact answer, no extra metadata: sending back a made-up id
would cost every such call CPU time for an id its caller does not read.

What the calls do is ``serving/api.py``'s, shared with the REST API; this module
reads and writes gRPC's messages and errors. Each ``Call`` names its client
(``serving.access.grpc_caller``: the token's name, else the peer's address).
"""
import asyncio
import functools
from typing import Callable, Optional, Tuple

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from core import request_log
from core.request_log import new_request_id
from serving import wire
from serving.access import grpc_caller, peer_address
from serving.api import (GRPC, Call, Received, ServingApi, result_response,
                         serialized_examples)
from serving.errors import ServingError, internal_error, invalid
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


def _start(api: str, request, context) -> Tuple[Call, Optional[str]]:
    """The call ``request`` makes, and the request id its caller sent (None: the
    call is logged under a made-up one)."""
    sent = _sent_request_id(context)
    name, version, label = _spec(request.model_spec)
    client, peer = grpc_caller(context)
    return Call(api, GRPC, sent or new_request_id(), name, version, label,
                request.model_spec.signature_name, client=client, peer=peer), sent


async def _abort_rejected(api: ServingApi, context, call: Call, err: ServingError,
                          received: Optional[Received] = None) -> None:
    """Answer ``err``, the call counted and logged as rejected (``ServingApi.rejected``)."""
    api.rejected(call, err, received)
    await context.abort(err.grpc_code, err.message)


def _serving_error(exc: Exception, call: Call) -> ServingError:
    """``exc`` as the caller sees it: a ServingError as it is, anything else INTERNAL
    (its traceback in the server's log)."""
    if isinstance(exc, ServingError):
        return exc
    return internal_error(f"answering a gRPC {call.api} call")


def _received_examples(request):
    """A rejected classify/regress call's examples, as logged (None: none readable)."""
    try:
        return request_log.examples_request(serialized_examples(request.input))
    except ServingError:
        return None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: ServingApi):
        self.api = api

    async def Predict(self, request, context):
        """The servicer API: a PredictRequest in, a PredictResponse out."""
        response = await self._predict(request, None, context)
        return None if response is None else predict_pb2.PredictResponse.FromString(response)

    async def predict_wire(self, parsed, context):
        """Predict as registered on the server: the request arrives with its wire
        bytes and the response leaves as bytes built here (``serving.wire``), so
        the request log reuses both instead of copying and re-serializing them."""
        request, raw = parsed
        return await self._predict(request, raw, context)

    async def _predict(self, request, raw: Optional[bytes], context) -> Optional[bytes]:
        call, sent = _start("predict", request, context)
        received = request if raw is None else raw
        budget = self.api.runner.max_tensor_bytes
        try:
            outputs = await self.api.predict(
                call, lambda signature: protos_to_arrays(request.inputs, budget),
                request.output_filter)
        except Exception as exc:   # noqa: BLE001 - every failure is answered, counted, logged
            await _abort_rejected(self.api, context, call, _serving_error(exc, call),
                                  lambda: received)
            return None
        spec = call.signature.outputs
        response = wire.predict_response_bytes(
            wire.model_spec_bytes(call.model_name, call.version, call.signature_name),
            [(alias, wire.tensor_bytes(array, spec[alias].dtype))
             for alias, array in outputs.items()])
        _return_request_id(context, sent)
        self.api.answered(call, lambda: (received, response))
        return response

    async def _classify_or_regress(self, request, context, kind: str):
        call, sent = _start(kind, request, context)
        try:
            result = await self.api.classify_or_regress(
                call, lambda: serialized_examples(request.input))
        except Exception as exc:   # noqa: BLE001 - every failure is answered, counted, logged
            await _abort_rejected(self.api, context, call, _serving_error(exc, call),
                                  functools.partial(_received_examples, request))
            return None
        response = result_response(call, result)
        _return_request_id(context, sent)
        self.api.answered(call, lambda: (request, response))
        return response

    async def Classify(self, request, context):
        return await self._classify_or_regress(request, context, "classify")

    async def Regress(self, request, context):
        return await self._classify_or_regress(request, context, "regress")

    async def MultiInference(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "MultiInference is not supported by tfxops serve")

    async def GetModelMetadata(self, request, context):
        call, _ = _start("metadata", request, context)
        try:
            response = self.api.model_metadata(call.model_name, call.version, call.label,
                                               list(request.metadata_field))
        except ServingError as err:
            await _abort_rejected(self.api, context, call, err)
            return None
        self.api.answered(call)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: ServingApi, reload_config: Optional[Callable] = None):
        self.api = api
        # ModelServer.reload_config(ModelServerConfig, client); None: reloads are refused
        self.reload_config = reload_config

    async def GetModelStatus(self, request, context):
        name, version, label = _spec(request.model_spec)
        try:
            return self.api.model_status(name, version, label)
        except ServingError as err:
            await context.abort(err.grpc_code, err.message)

    async def HandleReloadConfigRequest(self, request, context):
        """TF Serving's reload: the request's model_config_list replaces the served
        list (an empty config changes nothing, as TF Serving's). A list TF Serving
        would refuse is answered with its code and words, and nothing changes."""
        from tensorflow_serving.apis import model_management_pb2
        from serving.model_config import ModelConfigError

        if self.reload_config is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server does not reload its model config")
        client, peer = grpc_caller(context)
        address = peer_address(context.peer())
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self.reload_config, request.config, client or address, address)
        except ModelConfigError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        return model_management_pb2.ReloadConfigResponse()


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


def _guarded(method: Callable, name: str, counted_by: Optional[ServingApi]) -> Callable:
    """``method`` (the call ``name``) answering INVALID_ARGUMENT to unparseable
    requests (counted and logged as rejected by ``counted_by``, unless None) and
    INTERNAL (traceback to the server's log only) to anything it did not expect."""
    async def handle(request, context):
        if isinstance(request, _Unparseable):
            err = invalid(f"Could not parse the request: its bytes are not a "
                          f"{request.type_name}")
            if counted_by is not None:
                client, peer = grpc_caller(context)
                call = Call(name, GRPC, _sent_request_id(context) or new_request_id(),
                            client=client, peer=peer)
                return await _abort_rejected(counted_by, context, call, err)
            await context.abort(err.grpc_code, err.message)
        try:
            return await method(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception:   # noqa: BLE001
            err = internal_error(f"answering a gRPC {name} call")
            await context.abort(err.grpc_code, err.message)
    return handle


def _parse_predict(data: bytes):
    return predict_pb2.PredictRequest.FromString(data), data


def _serialize(message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_to_server(server, api: ServingApi, reload_config: Optional[Callable] = None) -> None:
    """TF Serving's PredictionService and ModelService (same service and method
    names, so every TF Serving client works unchanged), with Predict taking its
    request with the wire bytes and answering bytes (``PredictionServicer.predict_wire``)
    and every method ``_guarded``. ``reload_config``: HandleReloadConfigRequest's
    (``ModelServer.reload_config``; None: refused)."""
    from tensorflow_serving.apis import inference_pb2, model_management_pb2

    predictions = PredictionServicer(api)
    models = ModelServicer(api, reload_config)

    def handler(method, name, request_type, response_type, parse=None, counted=True):
        return grpc.unary_unary_rpc_method_handler(
            _guarded(method, name, api if counted else None),
            request_deserializer=_tolerant(parse or request_type.FromString, request_type),
            response_serializer=_serialize)

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {
            "Classify": handler(predictions.Classify, "classify",
                                classification_pb2.ClassificationRequest,
                                classification_pb2.ClassificationResponse),
            "Regress": handler(predictions.Regress, "regress", regression_pb2.RegressionRequest,
                               regression_pb2.RegressionResponse),
            "Predict": handler(predictions.predict_wire, "predict",
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
                                      counted=False),
            "HandleReloadConfigRequest": handler(
                models.HandleReloadConfigRequest, "reload",
                model_management_pb2.ReloadConfigRequest,
                model_management_pb2.ReloadConfigResponse, counted=False),
        })))

