"""Request logging: requests and their responses as ``PredictionLog`` TFRecords.

Open-source TF Serving cannot log requests, so our server (and our proxy in front
of TF Serving) does, in the record format TF Serving would use:
``tensorflow_serving.apis.prediction_log_pb2.PredictionLog`` with

* ``log_metadata.model_spec``: model name, the version that answered, signature;
* ``log_metadata.timestamp_secs``: when the request arrived (unix seconds);
* ``log_metadata.request_origin``: the request id (``X-Request-Id``; LogMetadata
  has no id field, this is the free-form one that fits);
* ``predict_log`` / ``classify_log`` / ``regress_log``: request and response.

REST JSON is logged as the equivalent gRPC request, so logs are uniform: a
``:predict`` body becomes the ``PredictRequest`` with the tensors the model was fed
(rows of ``{"b64": ...}`` examples -> the ``examples`` string tensor; rows of
feature values for ``serving_raw`` -> one tensor per feature); ``:classify`` /
``:regress`` bodies become ``Input.example_list[_with_context]`` of tf.Examples.
``read_request_log`` turns every form back into tf.Examples (see there).

Files: ``<dir>/requests-<UTC time>-<pid>-<seq>.tfrecord``, written under a hidden
``.<name>.tmp`` name and renamed when closed (after ``log_rotate_records`` records
or ``log_rotate_seconds``), so every non-hidden file is complete. Readers
(monitoring) should read ``closed_log_files()`` only.

Writing never blocks a request: ``submit`` appends the raw request/response
objects (or a function building the record) to a bounded queue, which costs the
event loop one ``deque.append`` — no lock, no thread wake-up, no protobuf work. A
writer thread wakes every ``DRAIN_SECONDS``, builds and serializes the queued
records and writes them in one go (few GIL hand-offs instead of one per request);
a full queue drops the record and counts it
(``tfxops_serving_request_log_dropped_total``). ``close()`` drains the queue and
closes the open file: a clean shutdown (SIGTERM) loses nothing.

What a crash can lose (the flush policy):

* ``kill -9``, an OOM kill, a crash of the process: every drain's records go to
  the operating system in one unbuffered ``write``, so only the records still
  queued are lost: the requests answered in the last ``DRAIN_SECONDS`` (50 ms)
  plus the time of one drain, never more than ``queue_size`` records. Every
  record counted by ``tfxops_serving_request_log_records_total`` is in the file.
* Power loss or a kernel crash: the open file is fsynced every ``FSYNC_SECONDS``
  (1 s) and before it is renamed, so about the last second of records.
* The open file of a killed writer stays behind as a hidden ``.<name>.tmp``.
  ``recover_orphans(directory)``, run by every ``RequestLogger.start()`` (and
  callable by the monitor), keeps every complete record of it (TFRecord framing
  and CRCs checked), drops a torn last record, and renames it to ``<name>``.
  A writer holds an exclusive ``fcntl.flock`` on its temp file from creation to
  rename, and recovery only touches files whose lock it can take: never the file
  of a live writer, in this process or another one sharing the directory (flock
  locks belong to the open file, so two loggers of one process exclude each
  other too; on NFS, Linux emulates flock with POSIX byte-range locks).
"""
import fcntl
import logging
import os
import random
import secrets
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import google_crc32c

from serving.wire import length_delimited, tag, varint

log = logging.getLogger("tfxops.serving")

FILE_PREFIX = "requests-"
FILE_SUFFIX = ".tfrecord"
TMP_SUFFIX = ".tmp"
DRAIN_SECONDS = 0.05     # the writer hands queued records to the OS this often
FSYNC_SECONDS = 1.0      # ... and makes them durable (power loss) this often


class RequestLogger:
    """A bounded queue and a writer thread producing rotated PredictionLog files."""

    def __init__(self, directory: Union[str, Path], sample_rate: float = 1.0,
                 rotate_records: int = 10_000, rotate_seconds: float = 60.0,
                 queue_size: int = 10_000, metrics=None):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"log_sample_rate must be in [0, 1], got {sample_rate}")
        self.directory = Path(directory)
        self.sample_rate = sample_rate
        self.rotate_records = max(1, int(rotate_records))
        self.rotate_seconds = max(0.01, float(rotate_seconds))
        self.metrics = metrics
        self._items: deque = deque()
        self._queue_size = max(1, int(queue_size))
        self._wake = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._seq = 0
        self._token = secrets.token_hex(3)
        self._fd: Optional[int] = None          # the open temp file (flock held)
        self._bytes = 0                           # complete records' bytes in it
        self._tmp_path: Optional[Path] = None
        self._final_path: Optional[Path] = None
        self._records = 0
        self._opened = 0.0
        self.written = 0
        self.dropped = 0
        self.closed_files: List[Path] = []

    # ------------------------------------------------ request side (never blocks)
    def start(self) -> "RequestLogger":
        """Recover the files of killed writers (``recover_orphans``), then write."""
        self.directory.mkdir(parents=True, exist_ok=True)
        recover_orphans(self.directory)
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()
        return self

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def submit(self, record: Union[object, Callable[[], object]]) -> bool:
        """Queue a PredictionLog (or a function making one, run on the writer thread)."""
        if len(self._items) >= self._queue_size:
            self.dropped += 1
            if self.metrics is not None:
                from serving import metrics as M
                self.metrics.inc(M.LOG_DROPPED)
            return False
        self._items.append(record)
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, close the open file; idempotent."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    # ------------------------------------------------ writer thread
    def _run(self):
        last_sync = time.monotonic()
        while True:
            stopping = self._stopping
            self._drain()
            if stopping:
                self._drain()
                self._close_file()
                return
            now = time.monotonic()
            if self._fd is not None and now - self._opened >= self.rotate_seconds:
                self._close_file()
            elif self._fd is not None and now - last_sync >= FSYNC_SECONDS:
                self._sync()
                last_sync = now
            self._wake.wait(DRAIN_SECONDS)

    def _drain(self) -> int:
        """Write every queued record; returns how many were written. Records are
        encoded and framed here, then written with one file write per drain (and
        per rotation): the writer thread takes the GIL once per drain, not once
        per record, so it does not keep interrupting the server's loop."""
        items, frames, written = self._items, [], 0
        while items:
            try:
                item = items.popleft()
            except IndexError:
                break
            data = self._encode(item)
            if data is None:
                continue
            frames.append(tfrecord_frame(data))
            if self._records + len(frames) >= self.rotate_records:
                written += self._write_frames(frames)
                frames = []
                self._close_file()
        if frames:
            written += self._write_frames(frames)
        if written and self.metrics is not None:
            from serving import metrics as M
            self.metrics.inc(M.LOGGED, value=written)
        return written

    def _encode(self, item) -> Optional[bytes]:
        try:
            record = item() if callable(item) else item
            if record is None:
                return None
            return record if isinstance(record, bytes) else record.SerializeToString()
        except Exception:   # noqa: BLE001 - a bad record must not stop the writer
            log.exception("request log: could not encode a record")
            if self.metrics is not None:
                from serving import metrics as M
                self.metrics.inc(M.LOG_ERRORS)
            return None

    def _write_frames(self, frames: List[bytes]) -> int:
        """Hand ``frames`` to the OS (no user-space buffer: a killed process loses
        none of them). A failed write is cut off the file, so it stays readable."""
        data = b"".join(frames)
        try:
            if self._fd is None:
                self._open_file()
            _write_all(self._fd, data)
        except Exception:   # noqa: BLE001 - a full disk must not stop the server
            log.exception("request log: could not write %d records", len(frames))
            self._cut_torn_write()
            if self.metrics is not None:
                from serving import metrics as M
                self.metrics.inc(M.LOG_ERRORS, value=len(frames))
            return 0
        self._bytes += len(data)
        self._records += len(frames)
        self.written += len(frames)
        return len(frames)

    def _cut_torn_write(self):
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._bytes)   # O_APPEND: the next write goes there
            except OSError:
                log.exception("request log: could not cut a failed write off %s", self._tmp_path)

    def _sync(self):
        try:
            os.fsync(self._fd)
        except OSError:
            log.exception("request log: could not fsync %s", self._tmp_path)

    def _open_file(self):
        """A new temp file, created and locked (flock) before anything is written.
        A recoverer that takes the lock in between finds it empty and removes it:
        then the next name is taken."""
        while True:
            self._seq += 1
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            # pid + a per-logger token + sequence: two loggers never share a name
            name = f"{FILE_PREFIX}{stamp}-{os.getpid()}-{self._token}-{self._seq:06d}{FILE_SUFFIX}"
            tmp = self.directory / f".{name}{TMP_SUFFIX}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _is_open_as(tmp, fd):
                    break
            except BlockingIOError:
                pass                             # a recoverer has it (and removes it)
            os.close(fd)
        self._fd, self._tmp_path, self._final_path = fd, tmp, self.directory / name
        self._records = self._bytes = 0
        self._opened = time.monotonic()

    def _close_file(self):
        """fsync, rename while still holding the lock (recovery keeps off), close."""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
            os.replace(self._tmp_path, self._final_path)
            self.closed_files.append(self._final_path)
            if self.metrics is not None:
                from serving import metrics as M
                self.metrics.inc(M.LOG_FILES)
        except Exception:   # noqa: BLE001 - left hidden: the next start recovers it
            log.exception("request log: could not close %s", self._tmp_path)
        finally:
            os.close(self._fd)                   # releases the lock
            self._fd = None
            self._records = 0       # records in the open file


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _is_open_as(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not renamed or removed)."""
    try:
        st, open_st = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (open_st.st_dev, open_st.st_ino)


# ------------------------------------------------------------------ crash recovery
@dataclass
class Recovered:
    """An orphaned temp file, recovered: ``path`` is its final name (``records``
    > 0), or the temp file removed because no record of it was complete."""
    path: Path
    records: int                  # complete records kept
    dropped_bytes: int            # bytes of a torn last record cut off


def recover_orphans(directory: Union[str, Path]) -> List[Recovered]:
    """Recover the hidden temp files of writers that died (``kill -9``, a crash):
    keep every complete record, cut a torn tail, rename to the final name. Files
    whose flock is held (a live writer's, in any process) are left alone, and so
    are files that cannot be recovered (not readable, writable or renamable: an
    error names each). Safe to run from several processes at once; each file is
    recovered by one of them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for tmp in sorted(directory.glob(f".{FILE_PREFIX}*{FILE_SUFFIX}{TMP_SUFFIX}")):
        try:
            found = _recover(tmp)
        except OSError as exc:
            log.error("request log: cannot recover %s (skipped, its records unread): %s. Make "
                      "it a regular file this user can read and write, with the name %s free "
                      "(the next server start or monitor run recovers it), or move it out of %s",
                      tmp, exc, tmp.name[1:-len(TMP_SUFFIX)], directory)
            continue
        if found is not None:
            log.warning("request log: recovered %s from a writer that died: %d records kept, "
                        "%d bytes of a torn record dropped%s", tmp.name, found.records,
                        found.dropped_bytes, "" if found.records else " (file removed)")
            out.append(found)
    return out


def _recover(tmp: Path) -> Optional[Recovered]:
    try:
        fd = os.open(tmp, os.O_RDWR)
    except FileNotFoundError:
        return None                    # closed or recovered meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None                # a live writer's file
        if not _is_open_as(tmp, fd):
            return None                # renamed by its writer or another recoverer
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        records, end = complete_records(data)
        final = tmp.with_name(tmp.name[1:-len(TMP_SUFFIX)])
        if not records:
            os.unlink(tmp)
            return Recovered(tmp, 0, len(data))
        os.ftruncate(fd, end)
        os.fsync(fd)
        os.replace(tmp, final)
        return Recovered(final, records, len(data) - end)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ request ids
def new_request_id() -> str:
    """The id a request is logged under when its caller sent none (and the id the
    clients in serving.client send): 32 random hex digits, like ``uuid.uuid4().hex``
    without its os.urandom system call on every request."""
    return "%032x" % random.getrandbits(128)


# ------------------------------------------------------------------ TFRecord framing
# One scanner for every reader of the request logs: the writer's crash recovery
# (``complete_records``) and the monitor (``monitoring.window.read_part``), which only
# classify what it finds.
CLEAN, CUT, CORRUPT = "clean", "cut", "corrupt"


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC (the bytes
    ``tf.io.TFRecordWriter`` writes; tests/serving/test_request_log.py compares)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


# ------------------------------------------------------------------ record building
def new_log(model_name: str, version: Optional[int], signature_name: str,
            request_id: str, timestamp: float):
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog()
    meta = record.log_metadata
    meta.model_spec.name = model_name
    if version is not None:
        meta.model_spec.version.value = int(version)
    meta.model_spec.signature_name = signature_name or ""
    meta.timestamp_secs = int(timestamp)
    meta.request_origin = request_id or ""
    meta.saved_model_tags.append("serve")
    if meta.sampling_config is not None:
        pass
    return record


_LOG_FIELDS = {}


def _log_field_numbers(kind: str):
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
                    request_id: str, timestamp: float) -> bytes:
    """``new_log(...).log_metadata`` serialized: the part shared by every request of
    a version (model spec, tags) is serialized once, the per-request fields
    (timestamp, request origin; higher field numbers) are appended."""
    key = (model_name, version, signature_name)
    cached = _META_PREFIXES.get(key)
    if cached is None:
        meta = new_log(model_name, version, signature_name, "", 0).log_metadata
        fields = meta.DESCRIPTOR.fields_by_name
        ts, origin = fields["timestamp_secs"].number, fields["request_origin"].number
        if any(f.number >= ts for f, _ in meta.ListFields()) or origin < ts:
            cached = None         # unexpected layout: no shortcut
        else:
            cached = (meta.SerializeToString(), tag(ts, 0), ts, origin)
        if len(_META_PREFIXES) > 1000:
            _META_PREFIXES.clear()
        _META_PREFIXES[key] = cached or ()
    if not cached:
        return new_log(model_name, version, signature_name, request_id,
                       timestamp).log_metadata.SerializeToString()
    prefix, ts_tag, _, origin = cached
    out = prefix
    seconds = int(timestamp)
    if seconds:
        out += ts_tag + varint(seconds & 0xFFFFFFFFFFFFFFFF)
    if request_id:
        out += length_delimited(origin, request_id.encode("utf-8"))
    return out


def encode_log(kind: str, model_name: str, version: Optional[int], signature_name: str,
               request_id: str, timestamp: float, request, response) -> bytes:
    """A serialized PredictionLog (``kind``: predict | classify | regress) from the
    request and response, each a message or its serialized bytes (e.g. the request
    exactly as it came off the wire, the response exactly as it was sent). Wire-format
    concatenation: parses to the same record as building it with CopyFrom, without
    copying or re-serializing either message."""
    log_number, request_number, response_number = _log_field_numbers(kind)
    meta = _metadata_bytes(model_name, version, signature_name, request_id, timestamp)
    if not isinstance(request, bytes):
        request = request.SerializeToString()
    if not isinstance(response, bytes):
        response = response.SerializeToString()
    return (length_delimited(1, meta)
            + length_delimited(log_number, length_delimited(request_number, request)
                                + length_delimited(response_number, response)))


# ------------------------------------------------------------------ rejected requests
# A request the server (or TF Serving behind the proxy) refused is logged too, so
# the monitor sees what clients sent even when nothing could be served: a
# PredictionLog whose ``predict_log.request`` holds what could be decoded of the
# request and whose response carries no model output, only ``ERROR_OUTPUT``: a
# string tensor [error code, message]. Every rejected call (predict, classify,
# regress; REST or gRPC) is logged in this one form.
ERROR_OUTPUT = "__error__"
LOGGED_CALLS = ("predict", "classify", "regress")   # the calls whose requests are logged
CALLER_FAULTS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION",
                           "OUT_OF_RANGE", "UNIMPLEMENTED"})
"""The codes of refusals that are logged: the caller sent something the model cannot
take. The server's own faults and refusals (INTERNAL, UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED, CANCELLED) are counted in the metrics but not logged: the monitor
would read an outage as clients sending bad requests."""


def logs_rejection(call: str, code: str) -> bool:
    """Whether a refused ``call`` (predict, classify, ...) with ``code`` is logged."""
    return call in LOGGED_CALLS and code in CALLER_FAULTS
REJECTED_REQUEST_MAX_BYTES = 1 << 20     # larger rejected requests: logged without inputs
_NAME_LIMIT = 256                        # model and signature names come from callers


def encode_rejected(model_name: str, version: Optional[int], signature_name: str,
                    request_id: str, timestamp: float, code: str, message: str,
                    request=None) -> bytes:
    """A serialized PredictionLog for a rejected call. ``request``: a PredictRequest
    (or its bytes) of what was received, None when nothing could be decoded."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow.core.framework import types_pb2

    if isinstance(request, bytes):
        request = predict_pb2.PredictRequest.FromString(request) \
            if len(request) <= REJECTED_REQUEST_MAX_BYTES else None
    out = predict_pb2.PredictRequest()
    if request is not None and request.ByteSize() <= REJECTED_REQUEST_MAX_BYTES:
        for alias, tensor in request.inputs.items():  # not inputs.MergeFrom: protobuf 3.20's
            out.inputs[alias].CopyFrom(tensor)        # C++ maps abort on a freshly parsed map
    name, signature = model_name[:_NAME_LIMIT], (signature_name or "")[:_NAME_LIMIT]
    out.model_spec.name, out.model_spec.signature_name = name, signature
    if version is not None:
        out.model_spec.version.value = int(version)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(out.model_spec)
    error = response.outputs[ERROR_OUTPUT]
    error.dtype = types_pb2.DT_STRING
    error.tensor_shape.dim.add().size = 2
    error.string_val.extend([code.encode(), message.encode("utf-8", "replace")])
    return encode_log("predict", name, version, signature, request_id, timestamp, out, response)


def rejection(record) -> Optional[Tuple[str, str]]:
    """(error code, message) of a logged rejected call; None for an answered one."""
    if record.WhichOneof("log_type") != "predict_log":
        return None
    tensor = record.predict_log.response.outputs.get(ERROR_OUTPUT)
    if tensor is None or len(tensor.string_val) != 2:
        return None
    code, message = tensor.string_val
    return code.decode("utf-8", "replace"), message.decode("utf-8", "replace")


def examples_request(serialized: List[bytes]):
    """A PredictRequest whose ``examples`` input holds ``serialized`` tf.Examples."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow.core.framework import types_pb2

    request = predict_pb2.PredictRequest()
    tensor = request.inputs["examples"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = len(serialized)
    tensor.string_val.extend(serialized)
    return request


def json_body_rows(doc: dict) -> List:
    """The rows of a REST request body as a client sent them: ``instances``,
    columnar ``inputs`` (one row per index of equally long lists) or the
    ``examples`` of classify/regress (merged with their ``context``)."""
    if isinstance(doc.get("instances"), list):
        return doc["instances"]
    inputs = doc.get("inputs")
    if isinstance(inputs, list):
        return inputs
    if isinstance(inputs, dict) and inputs:
        if not any(isinstance(v, list) for v in inputs.values()):
            return [inputs]                          # one row of scalars
        lengths = {len(v) if isinstance(v, list) else -1 for v in inputs.values()}
        if len(lengths) == 1 and -1 not in lengths:
            return [{k: v[i] for k, v in inputs.items()} for i in range(lengths.pop())]
    examples = doc.get("examples")
    if isinstance(examples, list):
        context = doc.get("context") if isinstance(doc.get("context"), dict) else {}
        return [dict(context, **e) if isinstance(e, dict) else e for e in examples]
    return []


def json_rows_to_examples(rows: List, dtypes: Optional[Dict[str, int]] = None) -> List[bytes]:
    """Serialized tf.Examples of JSON rows as a client sent them (objects of
    feature -> value, or ``{"b64": serialized example}``), typed by ``dtypes``
    (input alias -> DataType, from the signature) where known, else by the JSON
    value. A feature the row lacks (or sends as null) is absent from its example;
    an empty string is an empty list, as CsvExampleGen encodes an empty cell; a
    value of another type than the signature's is kept as it came, so the
    monitor's schema checks see it. Rows that are neither are left out."""
    import base64
    import tensorflow as tf

    out = []
    for row in rows:
        if isinstance(row, dict) and set(row) == {"b64"} and isinstance(row["b64"], str):
            try:
                out.append(base64.b64decode(row["b64"], validate=True))
            except ValueError:
                pass
            continue
        if not isinstance(row, dict):
            continue
        example = tf.train.Example()
        for name, value in row.items():
            _json_feature(example.features.feature, str(name)[:_NAME_LIMIT], value,
                          (dtypes or {}).get(name))
        out.append(example.SerializeToString())
    return out


def _json_feature(features, name: str, value, dtype: Optional[int]) -> None:
    if value is None:
        return                           # as a missing key
    values = value if isinstance(value, list) else [value]
    if any(v is None or isinstance(v, (list, dict)) for v in values):
        return                           # nested: nothing a tf.Example feature holds
    present = [v for v in values if v != ""]
    kind = _feature_kind(present, dtype)
    try:
        if kind == "float":
            features[name].float_list.value.extend([float(v) for v in present])
            return
        if kind == "int":
            features[name].int64_list.value.extend([int(v) for v in present])
            return
    except (OverflowError, ValueError):      # e.g. 2**70: no tf.Example number holds it
        pass
    features[name].bytes_list.value.extend(
        [v.encode("utf-8") if isinstance(v, str) else str(v).encode() for v in present])


def _feature_kind(present: List, dtype: Optional[int]) -> str:
    """float | int | bytes: the signature's type when every value fits it, else
    the type the JSON values have."""
    from tensorflow.core.framework import types_pb2 as T

    ints = all(isinstance(v, int) for v in present)             # bools too: 0/1
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if dtype in (T.DT_FLOAT, T.DT_DOUBLE) and numbers:
        return "float"
    if dtype in (T.DT_INT64, T.DT_INT32) and ints:
        return "int"
    if dtype == T.DT_STRING and all(isinstance(v, str) for v in present):
        return "bytes"
    if present and ints:
        return "int"
    return "float" if present and numbers else "bytes"


# ------------------------------------------------------------------ reading back
@dataclass
class LoggedRequest:
    request_id: str
    model_name: str
    model_version: Optional[int]
    signature_name: str
    timestamp: int                # unix seconds
    kind: str                     # predict | classify | regress
    examples: List                # tf.train.Example, one per row of the request
    predictions: List             # one per row: a value, {output: value}, or {label: score}
    error: Optional[Tuple[str, str]] = None   # (code, message) of a rejected call


def closed_log_files(directory: Union[str, Path]) -> List[Path]:
    """The complete log files in ``directory`` (hidden temporary files excluded), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.name.startswith(FILE_PREFIX) and p.name.endswith(FILE_SUFFIX))


def read_prediction_logs(paths: Iterable[Union[str, Path]]) -> Iterator:
    """The raw PredictionLog protos in ``paths``."""
    from tensorflow_serving.apis import prediction_log_pb2
    import tensorflow as tf

    for path in paths:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            record = prediction_log_pb2.PredictionLog()
            record.ParseFromString(raw)
            yield record


def read_request_log(source: Union[str, Path, Iterable[Union[str, Path]]]) -> Iterator[LoggedRequest]:
    """Logged requests as tf.Examples with their predictions; ``source`` is a log
    directory (its closed files are read) or an iterable of file paths.

    Mapping back to tf.Examples:
    * ``examples`` / ``inputs`` string tensor of a predict request: each string
      parsed as a serialized tf.Example;
    * a predict request with one tensor per feature (``serving_raw``): row i ->
      a tf.Example of each tensor's value i (float -> float_list, int -> int64_list,
      bytes -> bytes_list; an empty string becomes an empty list, as CsvExampleGen
      encodes an empty cell);
    * classify/regress: the request's examples, each merged with the context.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        paths = closed_log_files(source)
    elif isinstance(source, (str, Path)):
        paths = [source]
    else:
        paths = list(source)
    for record in read_prediction_logs(paths):
        yield to_logged_request(record)


def to_logged_request(record) -> LoggedRequest:
    meta = record.log_metadata
    kind = record.WhichOneof("log_type")
    version = meta.model_spec.version.value if meta.model_spec.HasField("version") else None
    error = rejection(record)
    if kind == "predict_log" and error:
        examples, predictions = rejected_examples(record), []
        version = _response_version(record.predict_log.response, version)
    elif kind == "predict_log":
        examples = predict_request_examples(record.predict_log.request)
        predictions = _predict_outputs(record.predict_log.response)
        version = _response_version(record.predict_log.response, version)
    elif kind == "classify_log":
        examples = input_examples(record.classify_log.request.input)
        predictions = [{c.label: c.score for c in cls.classes}
                       for cls in record.classify_log.response.result.classifications]
        version = _response_version(record.classify_log.response, version)
    elif kind == "regress_log":
        examples = input_examples(record.regress_log.request.input)
        predictions = [r.value for r in record.regress_log.response.result.regressions]
        version = _response_version(record.regress_log.response, version)
    else:
        raise ValueError(f"unsupported PredictionLog type {kind!r}")
    return LoggedRequest(meta.request_origin, meta.model_spec.name, version,
                         meta.model_spec.signature_name, meta.timestamp_secs,
                         kind.replace("_log", ""), examples, predictions, error)


def rejected_rows(request, logged_bytes: int) -> List[bytes]:
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
                name == "examples" or request.model_spec.signature_name in ("", "serving_default")):
            return list(tensor.string_val)           # serialized tf.Examples, one per row
    if _declared_elements(inputs, logged_bytes) > logged_bytes:
        return []
    try:
        examples = predict_request_examples(request)
    except Exception:  # noqa: BLE001 - ServingError (over budget), ragged tensors, bad bytes
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


def rejected_examples(record) -> List:
    """The rows of a logged rejected call, as tf.Examples (see ``rejected_rows``)."""
    import tensorflow as tf

    rows = rejected_rows(record.predict_log.request, record.ByteSize())
    parsed = []
    for row in rows:
        try:
            parsed.append(tf.train.Example.FromString(row))
        except Exception:  # noqa: BLE001 - a string that is no tf.Example: not a row
            continue
    return parsed


def _response_version(response, default):
    spec = response.model_spec
    return spec.version.value if spec.HasField("version") else default


def input_examples(inp) -> List:
    import tensorflow as tf

    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        return [_copy(e) for e in inp.example_list.examples]
    if kind == "example_list_with_context":
        context = inp.example_list_with_context.context
        out = []
        for e in inp.example_list_with_context.examples:
            merged = tf.train.Example()
            merged.CopyFrom(context)
            for name, feature in e.features.feature.items():
                merged.features.feature[name].CopyFrom(feature)
            out.append(merged)
        return out
    return []


def _copy(example):
    import tensorflow as tf

    out = tf.train.Example()
    out.CopyFrom(example)
    return out


def predict_request_examples(request) -> List:
    import tensorflow as tf
    from serving.tensors import proto_to_ndarray

    arrays = {k: proto_to_ndarray(v) for k, v in request.inputs.items()}
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
    from serving.tensors import proto_to_ndarray

    arrays = {k: proto_to_ndarray(v) for k, v in response.outputs.items()}
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
