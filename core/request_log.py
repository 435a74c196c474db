"""The request log's on-disk format: request ids, TFRecord framing, the records, reading back.

Open-source TF Serving cannot log requests, so our server (and our proxy in front
of TF Serving) does, in the record format TF Serving would use:
``tensorflow_serving.apis.prediction_log_pb2.PredictionLog`` with

* ``log_metadata.model_spec``: model name, the version that answered, signature;
* ``log_metadata.timestamp_secs``: when the request arrived (unix seconds);
* ``log_metadata.request_origin``: the request id (``X-Request-Id``; LogMetadata
  has no id field, this is the free-form one that fits);
* ``log_metadata.dc``: the client that sent the call: the name of its bearer token
  when the server authenticates, else its address (``serving.clients``); LogMetadata
  has no client field, and ``dc`` is its other free-form string ("" in older logs);
* ``log_metadata.saved_model_tags``: "serve", then, for a call whose rows had values
  outside the answering version's input domain (``core.domain``; marked by the server
  when ``out_of_domain_action`` is log or reject), ``OUT_OF_DOMAIN_TAG`` followed by
  the features, comma-separated (``tfxops:out_of_domain=payment_type,trip_miles``);
  LogMetadata has no field for it, and this repeated string is free-form;
  a shadow answer (``serving.traffic_split``: the canary version run on a call
  another version answered, never returned) carries ``SHADOW_TAG``, the version
  that produced it and the answered call's request id (``shadow_record``);
* ``predict_log`` / ``classify_log`` / ``regress_log``: request and response.

REST JSON is logged as the equivalent gRPC request, so logs are uniform: a
``:predict`` body becomes the ``PredictRequest`` with the tensors the model was fed
(rows of ``{"b64": ...}`` examples -> the ``examples`` string tensor; rows of
feature values for ``serving_raw`` -> one tensor per feature); ``:classify`` /
``:regress`` bodies become ``Input.example_list[_with_context]`` of tf.Examples.

A call the server (or TF Serving behind the proxy) refused is logged too, when the
caller is at fault (``logs_rejection``): a ``predict_log`` whose request holds what
could be decoded of the call (classify/regress rows as an ``examples`` tensor,
``examples_request``) and whose response carries no model output, only
``ERROR_OUTPUT``: a string tensor [error code, message].

Files: ``<dir>/requests-<UTC time>-<pid>-<token>-<seq>.tfrecord``, each record framed
as ``tf.io.TFRecordWriter`` frames it (``tfrecord_frame``), written under a hidden
``.<name>.tmp`` name and renamed when complete (``serving.log_writer``), so every
non-hidden file (``closed_log_files``) is complete.

Building a record (every front end: REST, gRPC and both proxies; the writer thread
calls the builder, the request path only queues it):

* ``answered_record(kind, model_name, version, signature_name, request_id, timestamp,
  request, response, client="", out_of_domain=()) -> bytes``: an answered call; ``kind`` is
  predict | classify | regress, ``request``/``response`` the call's request and response
  messages (or their serialized bytes), ``version`` the one that answered (None: unknown),
  ``timestamp`` unix seconds of arrival, ``out_of_domain`` the features marked;
* ``rejected_record(model_name, version, signature_name, request_id, timestamp, code,
  message, request=None, client="", out_of_domain=()) -> bytes``: a refused call; ``code`` a
  ``tensorflow.error.Code`` name, ``request`` a PredictRequest (or its bytes) of
  what was received, None when nothing could be decoded.

Reading back: ``scan_frames`` checks the framing of bytes (the writer's crash
recovery, the monitor's incremental reads), ``decode_records`` turns records into
``LoggedRequest``s (their rows as serialized tf.Examples), ``read_request_log`` reads
whole files: one reading of the format for the monitor, the tests and the tools.
"""
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import google_crc32c

from core.features import DEFAULT_SIGNATURE
from core.protowire import length_delimited, tag, varint

FILE_PREFIX = "requests-"
FILE_SUFFIX = ".tfrecord"
TMP_SUFFIX = ".tmp"


def closed_log_files(directory: Union[str, Path]) -> List[Path]:
    """The complete log files in ``directory`` (hidden temporary files excluded), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.name.startswith(FILE_PREFIX) and p.name.endswith(FILE_SUFFIX))


# ------------------------------------------------------------------ request ids
def new_request_id() -> str:
    """The id a request is logged under when its caller sent none (and the id the
    clients in serving.client send): 32 random hex digits, like ``uuid.uuid4().hex``
    without its os.urandom system call on every request."""
    return "%032x" % random.getrandbits(128)


# ------------------------------------------------------------------ TFRecord framing
# One scanner for every reader of the request logs: the writer's crash recovery
# (``complete_records``), the monitor (``monitoring.window.read_part``) and
# ``read_request_log``, which only classify what it finds.
CLEAN, CUT, CORRUPT = "clean", "cut", "corrupt"


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC (the bytes
    ``tf.io.TFRecordWriter`` writes; tests/serving/test_log_format.py compares)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


@dataclass
class Frames:
    """What ``scan_frames`` found in a byte range."""
    records: List[bytes]          # the payloads of the complete records, in order
    end: int                      # the byte offset where they end
    tail: str                     # CLEAN: nothing after them; CUT: the data ends in a record
    #                               cut short, zero bytes, or a last record whose data checksum
    #                               fails (being written, or torn for good); CORRUPT: a checksum
    #                               fails with more data after it (no writer appends there)
    detail: str = ""              # what is at ``end``, in words (empty when CLEAN)


def scan_frames(data: bytes, start: int = 0, stop: Optional[int] = None) -> Frames:
    """The TFRecords of ``data[start:stop]`` (``start`` on a record boundary): every
    complete record while the framing and both CRCs check, then what ends them.
    Byte offsets are ``data``'s; record numbers count from ``start``.

    This loop runs once per logged request when the monitor reads: it stays in plain
    Python with one ``unpack`` per header and no call it does not need."""
    end = len(data) if stop is None else stop
    records: List[bytes] = []
    append, unpack, masked_crc = records.append, struct.unpack_from, _masked_crc
    pos = start
    while pos < end:
        if pos + 12 > end:
            return Frames(records, pos, CUT, f"record {len(records)} header cut at byte {pos} of {end}")
        length, length_crc = unpack("<QI", data, pos)
        if length_crc != masked_crc(data[pos:pos + 8]):
            return _bad_header(data, records, pos, end)
        first = pos + 12
        last = first + length
        if last + 4 > end:
            return Frames(records, pos, CUT, f"record {len(records)} needs {length} bytes at byte {first}, "
                                             f"the data ends at {end}")
        payload = data[first:last]
        if unpack("<I", data, last)[0] != masked_crc(payload):
            if last + 4 == end:
                return Frames(records, pos, CUT, f"the last record ({len(records)}) fails its data checksum "
                                                 f"at byte {first} (not completely written)")
            return Frames(records, pos, CORRUPT, f"record {len(records)} data checksum mismatch at byte {first}")
        append(payload)
        pos = last + 4
    return Frames(records, pos, CLEAN)


def _bad_header(data: bytes, records: List[bytes], pos: int, end: int) -> Frames:
    """A header whose length checksum fails: zeros to the end are a record not written
    yet (a writer that extended the file first); anything else is corruption."""
    if not data[pos:end].strip(b"\0"):
        return Frames(records, pos, CUT, f"zero bytes from byte {pos} of {end} "
                                         f"(record {len(records)} not written yet)")
    return Frames(records, pos, CORRUPT, f"record {len(records)} length checksum mismatch at byte {pos}")


def complete_records(data: bytes) -> Tuple[int, int]:
    """(how many complete records ``data`` starts with, the byte offset where they
    end): ``scan_frames``' records, whatever ends them (a torn tail, garbage)."""
    frames = scan_frames(data)
    return len(frames.records), frames.end


# ------------------------------------------------------------------ building records
ERROR_OUTPUT = "__error__"         # the response output of a rejected call: [code, message]
LOGGED_CALLS = ("predict", "classify", "regress")   # the calls whose requests are logged
CALLER_FAULTS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION",
                           "OUT_OF_RANGE", "UNIMPLEMENTED"})
"""The codes of refusals that are logged: the caller sent something the model cannot
take. The server's own faults and refusals (INTERNAL, UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED, CANCELLED) are counted in the metrics but not logged: the monitor
would read an outage as clients sending bad requests."""
REJECTED_REQUEST_MAX_BYTES = 1 << 20     # larger rejected requests: logged without inputs
MAX_NAME_CHARS = 256                     # model and signature names come from callers
OUT_OF_DOMAIN_TAG = "tfxops:out_of_domain="   # a saved_model_tags entry: the features out of domain
SHADOW_TAG = "tfxops:shadow"     # a saved_model_tags entry: a shadow answer, logged and never returned


def logs_rejection(call: str, code: str) -> bool:
    """Whether a refused ``call`` (predict, classify, ...) with ``code`` is logged."""
    return call in LOGGED_CALLS and code in CALLER_FAULTS


def _out_of_domain_tag(features: Sequence[str]) -> str:
    return OUT_OF_DOMAIN_TAG + ",".join(features)


def _metadata(model_name: str, version: Optional[int], signature_name: str,
              request_id: str, timestamp: float, client: str = "", out_of_domain: Sequence[str] = ()):
    """A record's ``log_metadata`` (a LogMetadata message)."""
    from tensorflow_serving.apis import logging_pb2

    meta = logging_pb2.LogMetadata()
    meta.model_spec.name = model_name
    if version is not None:
        meta.model_spec.version.value = int(version)
    meta.model_spec.signature_name = signature_name or ""
    meta.timestamp_secs = int(timestamp)
    meta.request_origin = request_id or ""
    meta.dc = client or ""
    meta.saved_model_tags.append("serve")
    if out_of_domain:
        meta.saved_model_tags.append(_out_of_domain_tag(out_of_domain))
    return meta


_LOG_FIELDS: Dict[str, Tuple[int, int, int]] = {}


def _log_field_numbers(kind: str) -> Tuple[int, int, int]:
    """(PredictionLog field of ``kind``_log, its request field, its response field)."""
    numbers = _LOG_FIELDS.get(kind)
    if numbers is None:
        from tensorflow_serving.apis import prediction_log_pb2

        field = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[f"{kind}_log"]
        sub = field.message_type.fields_by_name
        numbers = _LOG_FIELDS[kind] = (field.number, sub["request"].number,
                                       sub["response"].number)
    return numbers


_META_PREFIXES: dict = {}


def _metadata_bytes(model_name: str, version: Optional[int], signature_name: str,
                    request_id: str, timestamp: float, client: str = "",
                    out_of_domain: Sequence[str] = ()) -> bytes:
    """``_metadata(...)`` serialized: the part shared by every request of a version
    (model spec, tags) is serialized once, the per-request fields (an out-of-domain
    tag, timestamp, client, request origin; in field order) are appended."""
    key = (model_name, version, signature_name)
    cached = _META_PREFIXES.get(key)
    if cached is None:
        meta = _metadata(model_name, version, signature_name, "", 0)
        fields = meta.DESCRIPTOR.fields_by_name
        ts, dc = fields["timestamp_secs"].number, fields["dc"].number
        origin, tags = fields["request_origin"].number, fields["saved_model_tags"].number
        if any(f.number >= ts for f, _ in meta.ListFields()) or not tags < ts < dc < origin:
            cached = None         # unexpected layout: no shortcut
        else:
            cached = (meta.SerializeToString(), tag(ts, 0), dc, origin, tags)
        if len(_META_PREFIXES) > 1000:
            _META_PREFIXES.clear()
        _META_PREFIXES[key] = cached or ()
    if not cached:
        return _metadata(model_name, version, signature_name, request_id, timestamp,
                         client, out_of_domain).SerializeToString()
    prefix, ts_tag, dc, origin, tags = cached
    out = prefix
    if out_of_domain:
        out += length_delimited(tags, _out_of_domain_tag(out_of_domain).encode("utf-8"))
    seconds = int(timestamp)
    if seconds:
        out += ts_tag + varint(seconds & 0xFFFFFFFFFFFFFFFF)
    if client:
        out += length_delimited(dc, client.encode("utf-8"))
    if request_id:
        out += length_delimited(origin, request_id.encode("utf-8"))
    return out


def answered_record(kind: str, model_name: str, version: Optional[int], signature_name: str,
                    request_id: str, timestamp: float, request, response, client: str = "",
                    out_of_domain: Sequence[str] = ()) -> bytes:
    """A serialized PredictionLog of an answered call (``kind``: predict | classify |
    regress) from its request and response, each a message or its serialized bytes
    (e.g. the request exactly as it came off the wire, the response exactly as it
    was sent). Wire-format concatenation: parses to the same record as building it
    with CopyFrom, without copying or re-serializing either message."""
    log_number, request_number, response_number = _log_field_numbers(kind)
    meta = _metadata_bytes(model_name, version, signature_name, request_id, timestamp, client, out_of_domain)
    if not isinstance(request, bytes):
        request = request.SerializeToString()
    if not isinstance(response, bytes):
        response = response.SerializeToString()
    return (length_delimited(1, meta)
            + length_delimited(log_number, length_delimited(request_number, request)
                                + length_delimited(response_number, response)))


def shadow_record(kind: str, model_name: str, version: Optional[int], signature_name: str,
                  request_id: str, timestamp: float, request, response, client: str = "") -> bytes:
    """A serialized PredictionLog of a shadow answer: as ``answered_record``, tagged
    ``SHADOW_TAG`` (``version``: the candidate that produced it)."""
    log_number, request_number, response_number = _log_field_numbers(kind)
    meta = _metadata(model_name, version, signature_name, request_id, timestamp, client)
    meta.saved_model_tags.append(SHADOW_TAG)
    return (length_delimited(1, meta.SerializeToString())
            + length_delimited(log_number, length_delimited(request_number, request.SerializeToString())
                               + length_delimited(response_number, response.SerializeToString())))


def rejected_record(model_name: str, version: Optional[int], signature_name: str,
                    request_id: str, timestamp: float, code: str, message: str,
                    request=None, client: str = "", out_of_domain: Sequence[str] = ()) -> bytes:
    """A serialized PredictionLog of a rejected call (``out_of_domain``: the features
    outside the input domain, when that was the reason). ``request``: a PredictRequest
    (or its bytes) of what was received, None when nothing could be decoded; one
    larger than ``REJECTED_REQUEST_MAX_BYTES`` is logged without its inputs."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow.core.framework import types_pb2

    if isinstance(request, bytes):
        request = predict_pb2.PredictRequest.FromString(request) \
            if len(request) <= REJECTED_REQUEST_MAX_BYTES else None
    out = predict_pb2.PredictRequest()
    if request is not None and request.ByteSize() <= REJECTED_REQUEST_MAX_BYTES:
        for alias, tensor in request.inputs.items():  # not inputs.MergeFrom: protobuf 3.20's
            out.inputs[alias].CopyFrom(tensor)        # C++ maps abort on a freshly parsed map
    name, signature = model_name[:MAX_NAME_CHARS], (signature_name or "")[:MAX_NAME_CHARS]
    out.model_spec.name, out.model_spec.signature_name = name, signature
    if version is not None:
        out.model_spec.version.value = int(version)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(out.model_spec)
    error = response.outputs[ERROR_OUTPUT]
    error.dtype = types_pb2.DT_STRING
    error.tensor_shape.dim.add().size = 2
    error.string_val.extend([code.encode(), message.encode("utf-8", "replace")])
    return answered_record("predict", name, version, signature, request_id, timestamp, out, response,
                           client, out_of_domain)


def examples_request(serialized: List[bytes]):
    """A PredictRequest whose ``examples`` input holds ``serialized`` tf.Examples
    (how a rejected classify/regress call, or REST rows, are logged)."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow.core.framework import types_pb2

    request = predict_pb2.PredictRequest()
    tensor = request.inputs["examples"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = len(serialized)
    tensor.string_val.extend(serialized)
    return request


# ------------------------------------------------------------------ reading back
EXAMPLES, TENSORS, INPUT, REJECTED = "examples", "tensors", "input", "rejected"
"""Where a logged request's rows come from: the serialized tf.Examples of a
``serving_default`` predict request, as logged (EXAMPLES); a predict request's other
tensors, one row per index (TENSORS); a classify/regress ``Input`` (INPUT); what
could be read of a rejected call (REJECTED)."""


class UnreadableRecord(ValueError):
    """A logged record that is not a PredictionLog, or whose request cannot be read."""


@dataclass
class LoggedRequest:
    """One logged call: its metadata and its rows as serialized tf.Examples."""
    __slots__ = ("request_id", "model_name", "model_version", "signature_name", "timestamp",
                 "kind", "rows", "source", "record", "error", "client", "out_of_domain", "shadow")
    request_id: str
    model_name: str
    model_version: Optional[int]  # the version that answered (or was asked for); None: unknown
    signature_name: str
    timestamp: int                # unix seconds
    kind: str                     # predict | classify | regress
    rows: Sequence[bytes]         # serialized tf.Example, one per row of the request
    source: str                   # EXAMPLES | TENSORS | INPUT | REJECTED: where ``rows`` come from
    record: object                # the PredictionLog
    error: Optional[Tuple[str, str]]   # (code, message) of a rejected call
    client: str                   # who sent it: token name or address ("": not recorded)
    out_of_domain: Tuple[str, ...]   # features the server marked out of its input domain
    shadow: bool                  # a shadow answer (``SHADOW_TAG``): never returned to the caller

    @property
    def examples(self) -> List:
        """The rows as tf.Examples (a rejected call's strings that are none: left out)."""
        import tensorflow as tf

        parsed = []
        for row in self.rows:
            try:
                parsed.append(tf.train.Example.FromString(row))
            except Exception:  # noqa: BLE001 - a string that is no tf.Example: not a row
                continue
        return parsed

    @property
    def predictions(self) -> List:
        """One per row: a value, {output: value}, or {label: score}; [] for a rejected call."""
        record = self.record
        if self.error is not None:
            return []
        if self.kind == "predict":
            return _predict_outputs(record.predict_log.response)
        if self.kind == "classify":
            return [{c.label: c.score for c in cls.classes}
                    for cls in record.classify_log.response.result.classifications]
        return [r.value for r in record.regress_log.response.result.regressions]


def decode_records(raws: Iterable[bytes]) -> Iterator[LoggedRequest]:
    """Serialized PredictionLogs as ``LoggedRequest``s, in order; ``UnreadableRecord``
    (naming the record's index) for one that is not a PredictionLog or whose request
    cannot be read. A rejected call always decodes (rows: what can be read of it,
    maybe none). The loop runs once per logged request when the monitor reads: the
    parser is looked up once, and a ``serving_default`` request's tf.Examples are
    kept as logged, never parsed here."""
    from tensorflow_serving.apis import prediction_log_pb2

    parse = prediction_log_pb2.PredictionLog.FromString
    for index, raw in enumerate(raws):
        try:
            record = parse(raw)
        except Exception as exc:  # noqa: BLE001 - a DecodeError
            raise UnreadableRecord(f"record {index} is not a PredictionLog ({exc})") from None
        try:
            call = _logged_request(record, len(raw))
        except Exception as exc:  # noqa: BLE001 - tensors that are no rows, an unknown log type
            raise UnreadableRecord(f"record {index}: cannot decode the request ({exc})") from None
        yield call


def _logged_request(record, size: int) -> LoggedRequest:
    """A parsed PredictionLog of ``size`` bytes as a ``LoggedRequest``."""
    meta = record.log_metadata
    spec = meta.model_spec
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request, response = record.predict_log.request, record.predict_log.response
        if ERROR_OUTPUT in response.outputs:
            rows, source, error = _rejected_rows(request, size), REJECTED, rejection(record)
        else:
            rows, source, error = _examples_tensor(request), EXAMPLES, None
            if rows is None:
                rows, source = [e.SerializeToString() for e in _predict_request_examples(request)], TENSORS
    elif kind in ("classify_log", "regress_log"):
        from core.examples import input_examples     # (TensorFlow: not on import, `tfxops predict` needs none)

        log = getattr(record, kind)
        rows, source, error = input_examples(log.request.input), INPUT, None
        response = log.response
    else:
        raise ValueError(f"unsupported PredictionLog type {kind!r}")
    answered = response.model_spec
    version = answered.version.value if answered.HasField("version") else (
        spec.version.value if spec.HasField("version") else None)
    return LoggedRequest(meta.request_origin, spec.name, version, spec.signature_name,
                         meta.timestamp_secs, kind[:-4], rows, source, record, error, meta.dc,
                         _marked_out_of_domain(meta.saved_model_tags), SHADOW_TAG in meta.saved_model_tags)


def _marked_out_of_domain(tags) -> Tuple[str, ...]:
    """The features an ``OUT_OF_DOMAIN_TAG`` among a record's tags names; () when none."""
    for text in tags:
        if text.startswith(OUT_OF_DOMAIN_TAG):
            return tuple(name for name in text[len(OUT_OF_DOMAIN_TAG):].split(",") if name)
    return ()


DT_STRING = 7     # tensorflow DataType DT_STRING: a wire constant of types.proto


def _examples_tensor(request) -> Optional[Sequence[bytes]]:
    """The serialized tf.Examples of a ``serving_default`` predict request (its one
    string tensor, as logged: not parsed), None for any other request."""
    inputs = request.inputs
    if len(inputs) != 1 or request.model_spec.signature_name not in ("", DEFAULT_SIGNATURE):
        return None
    tensor = inputs["examples"] if "examples" in inputs else next(iter(inputs.values()))
    if tensor.dtype == DT_STRING and tensor.string_val:
        return tensor.string_val
    return None


def read_records(paths: Iterable[Union[str, Path]]) -> Iterator[bytes]:
    """The serialized records of whole log files, in order; ``UnreadableRecord``
    naming the file and the byte when a file's framing is cut or corrupt."""
    for path in paths:
        frames = scan_frames(Path(path).read_bytes())
        yield from frames.records
        if frames.tail != CLEAN:
            raise UnreadableRecord(f"{path}: {frames.tail}: {frames.detail}")


def read_request_log(source: Union[str, Path, Iterable[Union[str, Path]]]) -> Iterator[LoggedRequest]:
    """Logged requests with their rows and predictions; ``source`` is a log
    directory (its closed files are read) or an iterable of file paths.

    Rows back as tf.Examples (``LoggedRequest.examples``):
    * ``examples`` / ``inputs`` string tensor of a predict request: each string
      parsed as a serialized tf.Example;
    * a predict request with one tensor per feature (``serving_raw``): row i ->
      a tf.Example of each tensor's value i (float -> float_list, int -> int64_list,
      bytes -> bytes_list; an empty string becomes an empty list, as CsvExampleGen
      encodes an empty cell);
    * classify/regress: the request's examples, each merged with the context;
    * a rejected call: what can be read of it; a hostile shape is never expanded
      past one element per byte of its record.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        paths = closed_log_files(source)
    elif isinstance(source, (str, Path)):
        paths = [source]
    else:
        paths = list(source)
    yield from decode_records(read_records(paths))


def rejection(record) -> Optional[Tuple[str, str]]:
    """(error code, message) of a logged rejected call; None for an answered one,
    ("UNKNOWN", ...) when its error tensor is malformed."""
    if record.WhichOneof("log_type") != "predict_log":
        return None
    outputs = record.predict_log.response.outputs
    if ERROR_OUTPUT not in outputs:
        return None
    tensor = outputs[ERROR_OUTPUT]
    if len(tensor.string_val) != 2:
        return "UNKNOWN", "the logged error tensor is malformed"
    code, message = tensor.string_val
    return code.decode("utf-8", "replace"), message.decode("utf-8", "replace")


def _rejected_rows(request, logged_bytes: int) -> List[bytes]:
    """What a rejected client sent, as serialized tf.Examples ([] when nothing can
    be read). A rejected request may be hostile (one value "splat" over a shape of
    2^28): its tensors are never expanded past one element per ``logged_bytes``
    (the size of its log record)."""
    from tensorflow.core.framework import types_pb2

    inputs = request.inputs
    if not inputs:
        return []
    if len(inputs) == 1:
        (name, tensor), = inputs.items()
        if tensor.dtype == types_pb2.DT_STRING and not tensor.tensor_content and (
                name == "examples" or request.model_spec.signature_name in ("", DEFAULT_SIGNATURE)):
            return list(tensor.string_val)           # serialized tf.Examples, one per row
    if _declared_elements(inputs, logged_bytes) > logged_bytes:
        return []
    try:
        examples = _predict_request_examples(request)
    except Exception:  # noqa: BLE001 - over the budget, ragged tensors, bad bytes
        return []
    return [e.SerializeToString() for e in examples]


def _declared_elements(inputs, limit: int) -> int:
    """Elements the tensors' shapes declare, counted up to just past ``limit``."""
    total = 0
    for tensor in inputs.values():
        count = 1
        for dim in tensor.tensor_shape.dim:
            if dim.size < 0:
                return limit + 1
            count *= dim.size
            if count > limit:
                return limit + 1
        total += count
        if total > limit:
            return limit + 1
    return total


MAX_LOGGED_ELEMENTS = 10 * 1024 * 1024    # a logged tensor declaring more is not read


def _tensor_array(proto):
    """A logged TensorProto as a numpy array; ValueError when its shape is unknown or
    larger than ``MAX_LOGGED_ELEMENTS``, or its values do not fill it (one value
    fills any shape: TensorFlow's splat)."""
    import math

    import tensorflow as tf

    shape = proto.tensor_shape
    sizes = [d.size for d in shape.dim]
    if shape.unknown_rank or any(s < 0 for s in sizes):
        raise ValueError("a tensor of unknown shape")
    count = math.prod(sizes)
    if count > MAX_LOGGED_ELEMENTS:
        raise ValueError(f"a tensor of {count} elements")
    if not proto.tensor_content:
        values = sum(len(v) for f, v in proto.ListFields() if f.name.endswith("_val"))
        if values not in (count, 1):
            raise ValueError(f"a tensor of {values} values for {count} elements")
    return tf.make_ndarray(proto)


def _predict_request_examples(request) -> List:
    """A predict request's rows as tf.Examples: its one string tensor parsed as
    serialized tf.Examples, else row i of every tensor as features."""
    import tensorflow as tf

    arrays = {k: _tensor_array(v) for k, v in request.inputs.items()}
    if len(arrays) == 1:
        (name, array), = arrays.items()
        if array.dtype == object and array.ndim == 1:
            try:
                return [tf.train.Example.FromString(bytes(v)) for v in array]
            except Exception:   # noqa: BLE001 - not serialized examples: a feature column
                pass
    rows = max((a.shape[0] for a in arrays.values() if a.ndim), default=0)
    out = []
    for i in range(rows):
        example = tf.train.Example()
        for name, array in sorted(arrays.items()):
            value = array[i] if array.ndim else array
            values = value.reshape(-1).tolist() if hasattr(value, "reshape") else [value]
            feature = example.features.feature[name]
            if array.dtype == object:
                feature.bytes_list.value.extend(
                    [v for v in values if v not in (b"", "")])
            elif array.dtype.kind == "f":
                feature.float_list.value.extend(values)
            elif array.dtype.kind in "iub":
                feature.int64_list.value.extend(int(v) for v in values)
        out.append(example)
    return out


def _predict_outputs(response) -> List:
    arrays = {k: _tensor_array(v) for k, v in response.outputs.items()}
    if not arrays:
        return []
    rows = max((a.shape[0] for a in arrays.values() if a.ndim), default=1)

    def value(a, i):
        v = a[i] if a.ndim else a
        return v.tolist() if hasattr(v, "tolist") else v

    if len(arrays) == 1:
        (array,) = arrays.values()
        return [value(array, i) for i in range(rows)]
    return [{k: value(a, i) for k, a in arrays.items()} for i in range(rows)]
