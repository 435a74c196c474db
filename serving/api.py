"""The serving API both front ends call, as TF Serving keeps its ``*_impl``
(predict, classify, regress, get_model_status, get_model_metadata) apart from its
HTTP and gRPC handlers. ``serving/rest.py`` and ``serving/grpc_service.py`` read
their wire format into a ``Call`` (and the call's tensors or examples), call this,
and write the answer or the error in their own format:

* ``ServingApi.predict`` / ``ServingApi.classify_or_regress``: resolve the model,
  version (or label) and signature the call names, hold that version while the
  model runs (``serving.service.ModelRunner``);
* ``ServingApi.model_status`` / ``ServingApi.model_metadata``: GetModelStatus and
  GetModelMetadata's answers (the REST API writes the same messages as JSON);
* ``result_response`` / ``result_json``: a classify or regress result as
  TF Serving's response message (gRPC, and the request log) or REST's JSON;
* ``serialized_examples``: the tf.Examples of an ``Input``, context merged;
* ``fill_model_spec``: the ModelSpec of the version and signature that answered;
* ``ServingApi.answered`` / ``ServingApi.rejected``: the one place a call is
  counted in the metrics and logged in the request log (``core.request_log``
  builds the record, on the log writer's thread);
* the out-of-domain check (``serving.domain_check``): with ``reject`` before the
  model runs, with ``log`` on the log writer's thread as the record is built;
* canary and shadow (``serving.traffic_split``, on when ``use_traffic_split`` is
  called): a call that names no version and no label is counted by the version
  that answered it and, after its answer is sent, may run again on the canary
  version (``ServingApi.shadow``), logged as that version's answer with
  ``core.request_log.SHADOW_TAG`` and the same request id, never returned.
"""
import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, predict_pb2, regression_pb2)

from core import request_log
from core.examples import input_examples
from core.domain import OFF, InputDomain
from serving import metrics as M
from serving.access import client_name
from serving.domain_check import DomainCheck, OutOfDomain
from serving.errors import ServingError, invalid
from serving.models import ModelVersion, Signature
from serving.service import ModelRunner
from serving.tensors import ndarray_to_proto
from serving.traffic_split import FAILED, LOGGED, NOT_LOADED, NOT_LOGGED, TrafficSplit

log = logging.getLogger("tfxops.serving")

REST, GRPC = "REST", "GRPC"        # the front ends (the metrics' ``entrypoint`` label)

Exchange = Callable[[], Tuple[object, object]]
"""An answered call's (request, response) messages (or their bytes), for its log record."""
Received = Callable[[], object]
"""What a rejected call sent, as a PredictRequest (or its bytes; None: nothing readable)."""


@dataclass(eq=False)
class Call:
    """One call as far as it is known: what its front end read, then the version
    and signature that answered it. Its metrics and its log record are made of this."""
    api: str                        # predict | classify | regress | metadata | ... (URL's method)
    entrypoint: str                 # REST | GRPC
    request_id: str                 # the caller's, or made up ("": not read, never logged)
    model_name: str = ""
    version: Optional[int] = None   # as requested, then the version that answered
    label: Optional[str] = None     # a version label, instead of a version
    signature_name: str = ""        # as named ("": the default), then the one that answered
    signature: Optional[Signature] = None        # once resolved
    client: str = ""                # who sent it: token name or address (serving.access)
    peer: str = ""                  # gRPC without a client yet: its raw peer (serving.access.client_name)
    domain: Optional[InputDomain] = None     # to check on the log writer's thread (out_of_domain_action log)
    started: float = field(default_factory=time.perf_counter)   # for the latency
    arrived: float = field(default_factory=time.time)           # the log's timestamp
    routed: Optional["RoutedInput"] = None   # named no version or label while the traffic split is on


class ServingApi:
    """The calls of TF Serving's PredictionService and ModelService, for any front end."""

    def __init__(self, runner: ModelRunner, metrics: M.Metrics, logger=None,
                 domain_check: Optional[DomainCheck] = None):
        self.runner = runner
        self.metrics = metrics
        self.logger = logger           # serving.log_writer.RequestLogger, or None
        self.domain_check = domain_check or DomainCheck(OFF, metrics, runner.models.names()[0])
        self._domain_checks = {self.domain_check.model_name: self.domain_check}   # one per model served
        self._rejects_out_of_domain = self.domain_check.rejects
        self._logs_out_of_domain = self.domain_check.logs and logger is not None
        self._metric_labels: Dict[tuple, tuple] = {}
        self.traffic_split: Optional[TrafficSplit] = None    # canary and shadow: ``use_traffic_split``
        self._splits = False
        self._shadow_tasks: set = set()      # shadow runs in flight (a task nobody holds may be collected)

    def use_traffic_split(self, split: TrafficSplit) -> None:
        """Count and shadow the calls naming no version or label (``serving.traffic_split``;
        the server gives each ModelManager the same split, which routes them)."""
        self.traffic_split, self._splits = split, True

    # ------------------------------------------------ inference
    async def predict(self, call: Call, feeds_for: Callable[[Signature], Dict[str, np.ndarray]],
                      output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """Run the signature the call names on ``feeds_for(signature)`` (the call's
        tensors, read by the front end once the signature is known)."""
        routed = self._splits and call.version is None and not call.label
        with self.runner.use_version(call.model_name, call.version, call.label) as loaded:
            signature = self._resolve(call, loaded)
            feeds = feeds_for(signature)
            if self._rejects_out_of_domain and loaded.domain is not None:
                self._domain_check_of(loaded.name).check_feeds(loaded.domain, feeds)
            outputs = await self.runner.predict(loaded, signature, feeds, output_filter)
            if routed:
                call.routed = RoutedInput(loaded.owner.labels, feeds, tuple(output_filter))
            return outputs

    async def classify_or_regress(self, call: Call, examples: Callable[[], List[bytes]]):
        """Classify or regress (``call.api``) the serialized tf.Examples ``examples()``
        returns (read by the front end once the signature is known): (classes,
        scores) [n, k] each, or None when the signature has none; values [n]."""
        routed = self._splits and call.version is None and not call.label
        with self.runner.use_version(call.model_name, call.version, call.label) as loaded:
            signature = self._resolve(call, loaded)
            rows = examples()
            if self._rejects_out_of_domain and loaded.domain is not None:
                self._domain_check_of(loaded.name).check_examples(loaded.domain, rows)
            result = await self.runner.classify_or_regress(loaded, signature, rows, call.api)
            if routed:
                call.routed = RoutedInput(loaded.owner.labels, rows)
            return result

    def _resolve(self, call: Call, loaded: ModelVersion) -> Signature:
        call.version = loaded.version
        signature = self.runner.signature(loaded, call.signature_name, call.entrypoint == REST)
        call.signature, call.signature_name = signature, signature.name
        if self._logs_out_of_domain:
            call.domain = loaded.domain
        return signature

    # ------------------------------------------------ model service, metadata
    def model_status(self, name: str, version: Optional[int],
                     label: Optional[str]) -> get_model_status_pb2.GetModelStatusResponse:
        from tensorflow.core.protobuf import error_codes_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.runner.models.status(name, version, label):
            item = response.model_version_status.add()
            item.version = status.version
            item.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            item.status.error_code = error_codes_pb2.Code.Value(status.error_code)
            item.status.error_message = status.error_message
        return response

    def model_metadata(self, name: str, version: Optional[int], label: Optional[str],
                       fields: Sequence[str] = ("signature_def",)
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        for requested in fields:
            if requested != "signature_def":
                raise invalid(f"Metadata field {requested} is not supported")
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        with self.runner.use_version(name, version, label) as loaded:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = loaded.version
            response.metadata["signature_def"].Pack(loaded.signature_def_map())
            return response

    # ------------------------------------------------ metrics and request log
    def answered(self, call: Call, exchange: Optional[Exchange] = None) -> None:
        """Count an answered call; log it (when sampled) if it is a predict,
        classify or regress call: ``exchange()``, called on the log writer's
        thread, gives its request and response."""
        self._count(call, "OK")
        logged = exchange is not None and self.logger is not None and self.logger.sampled()
        if logged:
            check = self.domain_check if call.domain is None else self._domain_check_of(call.model_name)
            self.logger.submit(functools.partial(_answered_record, call, exchange, check))
        if call.routed is not None:
            self._after_routed(call, logged)

    # ------------------------------------------------ canary and shadow
    def _after_routed(self, call: Call, logged: bool) -> None:
        """A routed call, answered (and ``logged`` or not): counted by its version; when
        drawn for the shadow, run again on the canary version after this returns."""
        split, labels = self.traffic_split, call.routed.labels
        split.count_routed(call.model_name, call.version, labels)
        if not split.wants_shadow(labels, call.version):
            return
        if not logged:           # an answer nobody reads: no pair for monitoring.agreement
            split.dropped(call.model_name, NOT_LOGGED)
        elif split.start_shadow(call.model_name):
            task = asyncio.get_running_loop().create_task(self.shadow(call, split.canary_version(labels)))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)

    async def shadow(self, call: Call, version: int) -> None:
        """Run an answered ``call``'s input on ``version`` and log the answer as a shadow
        record (same request id, ``SHADOW_TAG``); never raises, never answers anyone."""
        shadow_call = Call(call.api, call.entrypoint, call.request_id, call.model_name, version,
                           signature_name=call.signature_name, client=call.client, peer=call.peer,
                           arrived=call.arrived)
        outcome = FAILED
        try:
            with self.runner.use_version(call.model_name, version, None) as loaded:
                signature = self.runner.signature(loaded, call.signature_name, call.entrypoint == REST)
                shadow_call.signature, shadow_call.signature_name = signature, signature.name
                exchange = await self._shadow_exchange(shadow_call, loaded, signature, call.routed)
            self.logger.submit(functools.partial(_shadow_record, shadow_call, exchange))
            outcome = LOGGED
        except ServingError as err:
            outcome = NOT_LOADED if err.code == "NOT_FOUND" else FAILED
            log.debug("shadow run of request %s on version %s: %s", call.request_id, version, err.message)
        except Exception:   # noqa: BLE001 - the candidate's failure never reaches the caller
            log.exception("shadow run of request %s on version %s failed", call.request_id, version)
        finally:
            self.traffic_split.finish_shadow(call.model_name, version, outcome)

    async def finish_shadows(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the shadow runs in flight (at shutdown)."""
        if self._shadow_tasks:
            await asyncio.wait(list(self._shadow_tasks), timeout=timeout)

    async def _shadow_exchange(self, call: Call, loaded: ModelVersion, signature: Signature,
                               routed: "RoutedInput") -> Exchange:
        """Run ``routed``'s input on ``loaded``: the (request, response) builder of its record."""
        if call.api == "predict":
            outputs = await self.runner.predict(loaded, signature, routed.inputs, routed.output_filter)
            return functools.partial(_predict_exchange, call, routed.inputs, outputs)
        result = await self.runner.classify_or_regress(loaded, signature, routed.inputs, call.api)
        return functools.partial(_result_exchange, call, routed.inputs, result)

    def rejected(self, call: Call, err: ServingError, received: Optional[Received] = None) -> None:
        """Count a refused call; log it (when sampled) if the caller is at fault
        (``core.request_log.logs_rejection``): ``received()``, called on the log
        writer's thread, gives what the call sent."""
        self._count(call, err.code)
        if (request_log.logs_rejection(call.api, err.code) and self.logger is not None
                and self.logger.sampled()):
            self.logger.submit(functools.partial(_rejected_record, call, err, received))

    def _domain_check_of(self, model_name: str) -> DomainCheck:
        """The out-of-domain check counting under ``model_name`` (a model served)."""
        check = self._domain_checks.get(model_name)
        if check is None:
            check = self._domain_checks[model_name] = self.domain_check.for_model(model_name)
        return check

    def _count(self, call: Call, status: str) -> None:
        """A call and its latency in the metrics. Label values callers choose (the
        model name, the REST URL's method) are bounded: no call makes a series of its own."""
        model = call.model_name if call.model_name in self.runner.models.by_name else M.UNKNOWN_MODEL
        api = call.api if call.api in M.APIS else M.OTHER_API
        key = (model, api, call.entrypoint, status)
        labels = self._metric_labels.get(key)
        if labels is None:
            labels = self._metric_labels[key] = (
                (("model_name", model), ("status", status)),
                (("model_name", model), ("API", api), ("entrypoint", call.entrypoint)))
        self.metrics.count_and_observe(M.REQUEST_COUNT, labels[0], M.REQUEST_LATENCY, labels[1],
                                       (time.perf_counter() - call.started) * 1e6,
                                       M.LATENCY_BUCKETS_US)


def _answered_record(call: Call, exchange: Exchange, check: DomainCheck) -> bytes:
    request, response = exchange()
    marked = () if call.domain is None else check.logged(call.domain, call.api, request)
    return request_log.answered_record(call.api, call.model_name, call.version,
                                       call.signature_name, call.request_id, call.arrived,
                                       request, response, client_name(call.client, call.peer), marked)


@dataclass
class RoutedInput:
    """What a call that named no version or label ran on: the labels of its model
    then, and its input (tensors of a predict call, serialized tf.Examples of a
    classify or regress call), kept for a shadow run."""
    labels: Dict[str, int]
    inputs: object
    output_filter: Tuple[str, ...] = ()


def _shadow_record(call: Call, exchange: Exchange) -> bytes:
    request, response = exchange()
    return request_log.shadow_record(call.api, call.model_name, call.version, call.signature_name,
                                     call.request_id, call.arrived, request, response,
                                     client_name(call.client, call.peer))


def _predict_exchange(call: Call, feeds: Dict[str, np.ndarray], outputs: Dict[str, np.ndarray]):
    """A predict call's tensors and outputs as TF Serving's request and response."""
    signature = call.signature
    request, response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
    fill_model_spec(request.model_spec, call)
    for alias, array in feeds.items():
        ndarray_to_proto(array, signature.inputs[alias].dtype, request.inputs[alias])
    response.model_spec.CopyFrom(request.model_spec)
    for alias, array in outputs.items():
        ndarray_to_proto(array, signature.outputs[alias].dtype, response.outputs[alias])
    return request, response


def _result_exchange(call: Call, rows: List[bytes], result):
    """A classify or regress call's examples and result as TF Serving's request and response."""
    request = classification_pb2.ClassificationRequest() if call.api == "classify" \
        else regression_pb2.RegressionRequest()
    fill_model_spec(request.model_spec, call)
    for row in rows:
        request.input.example_list.examples.add().ParseFromString(row)
    return request, result_response(call, result)


def _rejected_record(call: Call, err: ServingError, received: Optional[Received]) -> bytes:
    return request_log.rejected_record(call.model_name, call.version, call.signature_name,
                                       call.request_id, call.arrived, err.code, err.message,
                                       received() if received is not None else None,
                                       client_name(call.client, call.peer),
                                       err.features if isinstance(err, OutOfDomain) else ())


# ------------------------------------------------------------------ examples and results
def serialized_examples(inp) -> List[bytes]:
    """An ``Input``'s examples, context merged (``core.examples.input_examples``);
    an ``Input`` that holds no list is refused as TF Serving refuses it."""
    if inp.WhichOneof("kind") is None:
        raise invalid("Input is empty.")
    return input_examples(inp)


def result_response(call: Call, result):
    """A classify or regress result (``call.api``) as TF Serving's response message."""
    if call.api == "classify":
        response = classification_pb2.ClassificationResponse()
        classes, scores = result
        for i in range(len(classes) if classes is not None else len(scores)):
            row = response.result.classifications.add()
            for j in range((classes if classes is not None else scores).shape[1]):
                item = row.classes.add()
                if classes is not None:
                    item.label = _label_text(classes[i, j])
                if scores is not None:
                    item.score = float(scores[i, j])
    else:
        response = regression_pb2.RegressionResponse()
        for value in np.asarray(result).tolist():
            response.result.regressions.add().value = value
    fill_model_spec(response.model_spec, call)
    return response


def fill_model_spec(spec, call: Call) -> None:
    """A ModelSpec naming the model, version and signature that answered ``call``."""
    spec.name = call.model_name
    spec.version.value = call.version
    spec.signature_name = call.signature_name


def result_json(api: str, result) -> dict:
    """A classify or regress result as TF Serving's REST API writes it: ``results``,
    [[label, score], ...] per example, or one value per example; floats as the
    shortest text of their float32."""
    if api == "regress":
        return {"results": [float(repr(v)) for v in np.asarray(result, np.float32)]}
    classes, scores = result
    rows = []
    for i in range(len(classes) if classes is not None else len(scores)):
        row = []
        for j in range((classes if classes is not None else scores).shape[1]):
            label = _label_text(classes[i, j]) if classes is not None else ""
            score = float(repr(np.float32(scores[i, j]))) if scores is not None else 0.0
            row.append([label, score])
        rows.append(row)
    return {"results": rows}


def _label_text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
