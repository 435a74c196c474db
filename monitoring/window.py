"""Which request logs a run reads, the checkpoint, and decoding them to columns.

The checkpoint (``<monitor_dir>/state.json``, replaced atomically) lists every log
file already analysed. A run first *opens* a window: the closed log files not in
the checkpoint (at most ``monitor_max_files``), written to the checkpoint before
anything is read. A run that completes commits the window (its files become
analysed). A run that crashes leaves the window open, and the next run analyses
exactly that window again, so no request is counted twice or lost; files that
arrived meanwhile go to the window after it.

Decoding is the hot path (1M requests in seconds): TFRecord framing is read in
Python with CRC checks (a truncated or corrupt file is detected before any of
it is counted; ``monitoring.logfiles`` decides whether it is still being written,
and retried by the next run, or corrupt, and quarantined), each record is parsed once as a
``PredictionLog``, and the serialized tf.Examples of a ``serving_default``
predict request are decoded in C++ by tfx_bsl into an Arrow RecordBatch (types
inferred, as StatisticsGen infers them from CsvExampleGen's examples). Other
request forms (``serving_raw`` tensors, classify/regress) go through
``serving.request_log.to_logged_request``, the reference decoding.
"""
import dataclasses
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from serving import request_log

STATE_VERSION = 1


class CorruptLogError(ValueError):
    """A log file that cannot be read completely."""


class TruncatedLogError(CorruptLogError):
    """A log file whose framing ends in a cut (or not yet filled) last record: a file
    still being written, or one torn for good; ``monitoring.logfiles`` tells which."""


# ------------------------------------------------------------------ checkpoint
class Checkpoint:
    """The monitor's state: analysed files, the open window, past actions."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / "state.json"
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
        else:
            self.data = {}
        self.data.setdefault("version", STATE_VERSION)
        self.data.setdefault("files", {})          # name -> {"status", "records", "rows", "window"}
        self.data.setdefault("open_window", None)   # {"id", "files", "opened"}
        self.data.setdefault("windows", [])         # committed window ids, oldest first
        self.data.setdefault("actions", [])         # every action taken (or started)
        self.data.setdefault("previous_statistics", {})   # model version -> stats path

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as handle:
            json.dump(self.data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    # actions -----------------------------------------------------------------
    def action_for_window(self, window_id: str) -> Optional[Dict]:
        return next((a for a in self.data["actions"] if a["window"] == window_id), None)

    def last_action(self) -> Optional[Dict]:
        return self.data["actions"][-1] if self.data["actions"] else None


@dataclasses.dataclass
class Window:
    id: str
    files: List[Path]
    resumed: bool


def open_window(checkpoint: Checkpoint, log_dir: Path, max_files: int, persist: bool = True) -> Window:
    """The open window of a crashed run, or a new one of the unread closed files
    (recorded in the checkpoint unless ``persist`` is false: a dry run)."""
    log_dir = Path(log_dir)
    current = checkpoint.data["open_window"]
    if current:
        files = [log_dir / name for name in current["files"]]
        return Window(current["id"], [p for p in files if p.exists()], resumed=True)
    done = checkpoint.data["files"]
    files = [p for p in request_log.closed_log_files(log_dir) if p.name not in done][:max(1, max_files)]
    if not files:
        return Window("", [], resumed=False)
    digest = hashlib.sha1("\n".join(p.name for p in files).encode()).hexdigest()[:8]
    window_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + digest
    if persist:
        checkpoint.data["open_window"] = {"id": window_id, "files": [p.name for p in files],
                                          "opened": time.time()}
        checkpoint.save()
    return Window(window_id, files, resumed=False)


def release_window(checkpoint: Checkpoint) -> None:
    """Close the open window without committing anything (none of its files could be
    read yet): they are offered again to the next run."""
    checkpoint.data["open_window"] = None
    checkpoint.save()


def commit_window(checkpoint: Checkpoint, window: Window, file_results: Dict[str, Dict]) -> None:
    for name, result in file_results.items():
        checkpoint.data["files"][name] = dict(result, window=window.id)
    checkpoint.data["windows"].append(window.id)
    checkpoint.data["open_window"] = None
    checkpoint.save()


# ------------------------------------------------------------------ TFRecord framing
def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: Path, verify: bool = True) -> List[bytes]:
    """Every record of an uncompressed TFRecord file. Nothing of a bad file is returned:
    ``TruncatedLogError`` when its framing ends in a record cut short, or in a last
    record whose checksum fails with nothing after it (a writer that extended the
    file before filling it: zeros, a torn write); ``CorruptLogError`` when a checksum
    fails with more data after it (corruption in the middle)."""
    data = Path(path).read_bytes()
    records, pos, end, index = [], 0, len(data), 0
    unpack = struct.unpack_from
    while pos < end:
        if pos + 12 > end:
            raise TruncatedLogError(f"truncated: record {index} header cut at byte {pos} of {end}")
        (length,) = unpack("<Q", data, pos)
        if verify and unpack("<I", data, pos + 8)[0] != _masked_crc(data[pos:pos + 8]):
            if not data[pos:].strip(b"\0"):
                raise TruncatedLogError(f"truncated: zero bytes from byte {pos} of {end} "
                                        f"(record {index} not written yet)")
            raise CorruptLogError(f"corrupt: record {index} length checksum mismatch at byte {pos}")
        start = pos + 12
        stop = start + length
        if stop + 4 > end:
            raise TruncatedLogError(f"truncated: record {index} needs {length} bytes at byte {start}, "
                                    f"file has {end}")
        payload = data[start:stop]
        if verify and unpack("<I", data, stop)[0] != _masked_crc(payload):
            if stop + 4 == end:
                raise TruncatedLogError(f"truncated: the last record ({index}) fails its data checksum "
                                        f"at byte {start} (not completely written)")
            raise CorruptLogError(f"corrupt: record {index} data checksum mismatch at byte {start}")
        records.append(payload)
        pos = stop + 4
        index += 1
    return records


# ------------------------------------------------------------------ decoding
@dataclasses.dataclass
class Chunk:
    """The rows of one log file served by one model version."""
    model_name: str
    version: Optional[int]
    serialized: List[bytes]           # one tf.Example per row
    predictions: np.ndarray           # float32 per row (NaN when unknown)
    request_ids: List[str]            # per row
    row_in_request: np.ndarray        # int32 per row
    timestamps: np.ndarray            # int64 per row
    rejected: Optional["Rejected"] = None   # the requests refused for this (model, version)
    signatures: Dict[str, int] = dataclasses.field(default_factory=dict)   # rows per logged signature name


@dataclasses.dataclass
class Rejected:
    """The rejected requests of one log file for one (model, version): the error the
    server answered and what the client sent (rows as serialized tf.Examples, not
    yet validated: ``monitoring.rejections`` reads them)."""
    rows: List[bytes] = dataclasses.field(default_factory=list)
    row_counts: List[int] = dataclasses.field(default_factory=list)    # per request (0: none readable)
    codes: List[str] = dataclasses.field(default_factory=list)
    messages: List[str] = dataclasses.field(default_factory=list)
    timestamps: List[int] = dataclasses.field(default_factory=list)
    signatures: List[str] = dataclasses.field(default_factory=list)

    def add(self, code: str, message: str, timestamp: int, rows: List[bytes], signature: str) -> None:
        self.rows.extend(rows)
        self.signatures.append(signature)
        self.row_counts.append(len(rows))
        self.codes.append(code)
        self.messages.append(message)
        self.timestamps.append(timestamp)


ERROR_OUTPUT = request_log.ERROR_OUTPUT


def _rejection(record) -> Tuple[str, str]:
    """(code, message) of a logged rejected call (``serving.request_log``'s form)."""
    return request_log.rejection(record) or ("UNKNOWN", "the logged error tensor is malformed")


def _elements(inputs, limit: int) -> int:
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


def _rejected_rows(request, record_bytes: int) -> List[bytes]:
    """What a rejected client sent, as serialized tf.Examples ([] when nothing can be
    read). Tensors are never expanded past one element per logged byte: a rejected
    request may be hostile (one value "splat" over a shape of 2^28)."""
    inputs = request.inputs
    if not inputs:
        return []
    if len(inputs) == 1:
        (name, tensor), = inputs.items()
        if tensor.dtype == 7 and not tensor.tensor_content and (
                name == "examples" or request.model_spec.signature_name in ("", "serving_default")):
            return list(tensor.string_val)           # serialized tf.Examples, one per row
    if _elements(inputs, record_bytes) > record_bytes:
        return []
    try:
        examples = request_log.predict_request_examples(request)
    except Exception:  # noqa: BLE001 - ServingError (over budget), ragged tensors, bad bytes
        return []
    return [e.SerializeToString() for e in examples]


def _prediction_values(response, rows: int) -> List[float]:
    outputs = response.outputs
    if outputs:
        tensor = outputs["probabilities"] if "probabilities" in outputs else outputs[sorted(outputs)[0]]
        values = tensor.float_val or tensor.double_val
        if len(values) == rows:
            return values
        if rows and values and len(values) % rows == 0:   # [rows, k]: the last column
            k = len(values) // rows
            return [values[i * k + k - 1] for i in range(rows)]
    return [float("nan")] * rows


def _scalar(prediction) -> float:
    if isinstance(prediction, dict):
        for key in ("probabilities", "1", b"1"):
            if key in prediction:
                return _scalar(prediction[key])
        return _scalar(next(iter(prediction.values()))) if prediction else float("nan")
    if isinstance(prediction, (list, tuple)):
        return _scalar(prediction[-1]) if prediction else float("nan")
    try:
        return float(prediction)
    except (TypeError, ValueError):
        return float("nan")


def decode_file(path: Path) -> Tuple[List[Chunk], int]:
    """A log file as chunks per (model, version); and its number of records.
    Raises ``CorruptLogError`` for a file that cannot be read whole. A rejected call
    goes to its chunk's ``rejected`` part whatever its request holds (nothing, bytes
    that are not tf.Examples, hostile shapes): it never makes the file unreadable.
    A chunk counts its answered rows per logged signature name (``monitoring.contract``
    judges a feature only in the rows of the signatures that take it).

    The loop runs once per logged request, so it stays in plain Python lists:
    numpy per record would cost more than the parsing."""
    from tensorflow_serving.apis import prediction_log_pb2

    raws = read_tfrecords(path)
    groups: Dict[Tuple[str, Optional[int]], Tuple[list, list, list, list, list, dict]] = {}
    rejected: Dict[Tuple[str, Optional[int]], Rejected] = {}
    parse = prediction_log_pb2.PredictionLog.FromString
    for index, raw in enumerate(raws):
        try:
            record = parse(raw)
        except Exception as exc:  # noqa: BLE001 - a DecodeError: the file is corrupt
            raise CorruptLogError(f"corrupt: record {index} is not a PredictionLog ({exc})") from None
        meta = record.log_metadata
        spec = meta.model_spec
        version = spec.version.value if spec.HasField("version") else None
        serialized = None
        if record.HasField("predict_log"):
            response = record.predict_log.response
            outputs = response.outputs
            if ERROR_OUTPUT in outputs:             # a rejected call
                part = rejected.get((spec.name, version)) or rejected.setdefault((spec.name, version), Rejected())
                part.add(*_rejection(record), meta.timestamp_secs, _rejected_rows(record.predict_log.request, len(raw)),
                         spec.signature_name)
                continue
            request = record.predict_log.request
            inputs = request.inputs
            if len(inputs) == 1 and request.model_spec.signature_name in ("", "serving_default"):
                tensor = inputs["examples"] if "examples" in inputs else next(iter(inputs.values()))
                if tensor.dtype == 7 and tensor.string_val:
                    serialized = tensor.string_val
                    if response.model_spec.HasField("version"):
                        version = response.model_spec.version.value
                    values = outputs["probabilities"].float_val if "probabilities" in outputs else None
                    predictions = values if values is not None and len(values) == len(serialized) \
                        else _prediction_values(response, len(serialized))
        if serialized is None:
            try:
                logged = request_log.to_logged_request(record)
            except Exception as exc:  # noqa: BLE001
                raise CorruptLogError(f"record {index}: cannot decode the request ({exc})") from None
            version = logged.model_version
            serialized = [e.SerializeToString() for e in logged.examples]
            predictions = [_scalar(p) for p in logged.predictions]
            if len(predictions) != len(serialized):
                predictions = [float("nan")] * len(serialized)
        group = groups.get((spec.name, version))
        if group is None:
            group = groups[(spec.name, version)] = ([], [], [], [], [], {})
        n = len(serialized)
        counts, signature = group[5], spec.signature_name
        counts[signature] = counts.get(signature, 0) + n
        group[0].extend(serialized)
        group[1].extend(predictions)
        if n == 1:
            group[2].append(meta.request_origin)
            group[3].append(0)
            group[4].append(meta.timestamp_secs)
        else:
            group[2].extend([meta.request_origin] * n)
            group[3].extend(range(n))
            group[4].extend([meta.timestamp_secs] * n)
    for key in rejected.keys() - groups.keys():
        groups[key] = ([], [], [], [], [], {})
    chunks = [Chunk(name, version, g[0], np.asarray(g[1], np.float32), g[2],
                    np.asarray(g[3], np.int32), np.asarray(g[4], np.int64), rejected.get((name, version)), g[5])
              for (name, version), g in groups.items()]
    return chunks, len(raws)


class NeedsInference(Exception):
    """The logged examples do not fit the decoding schema: decode with inferred types."""


class ExampleDecoder:
    """Serialized tf.Examples -> Arrow RecordBatch (C++, tfx_bsl).

    With a ``schema`` (a decoding hint: the types the examples should have), the
    decoder is about twice as fast as with inferred types. It must not hide
    anything from validation, so: columns that are null in every row (features no
    example carries) are dropped, as type inference leaves them out; ``check``
    decodes a sample with inferred types and raises ``NeedsInference`` when an
    example carries a feature the schema does not know; a feature of another type
    than the schema's raises it too. The caller then decodes everything with
    inferred types, so the anomalies see exactly what was logged."""

    def __init__(self, schema=None):
        from tfx_bsl.coders import example_coder

        self._inferred = example_coder.ExamplesToRecordBatchDecoder()
        self._typed = (example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())
                       if schema is not None else None)
        self._known = {f.name for f in schema.feature} if schema is not None else set()

    def check(self, serialized: List[bytes], sample: int = 256) -> None:
        if self._typed is None or not serialized:
            return
        step = max(1, len(serialized) // sample)
        names = set(self._inferred.DecodeBatch(serialized[::step]).schema.names)
        if not names <= self._known:
            raise NeedsInference(f"features not in the decoding schema: {sorted(names - self._known)}")

    def decode(self, serialized: List[bytes]):
        if self._typed is None:
            return self._inferred.DecodeBatch(serialized)
        import pyarrow as pa

        try:
            batch = self._typed.DecodeBatch(serialized)
        except RuntimeError as exc:      # "Feature had wrong type"
            raise NeedsInference(str(exc)) from None
        keep = [i for i, column in enumerate(batch.columns) if column.null_count < batch.num_rows]
        if len(keep) == batch.num_columns:
            return batch
        return pa.RecordBatch.from_arrays([batch.column(i) for i in keep],
                                          [batch.schema.names[i] for i in keep])


def iter_files(files: List[Path]) -> Iterator[Tuple[Path, Optional[List[Chunk]], int, Optional[Exception]]]:
    """(path, chunks, records, error) per file; a bad file has chunks None and its
    error (``CorruptLogError``, ``TruncatedLogError``, or the ``OSError`` of reading it)."""
    for path in files:
        try:
            chunks, records = decode_file(path)
        except (CorruptLogError, OSError) as exc:
            yield path, None, 0, exc
            continue
        yield path, chunks, records, None
