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
it is counted, and skipped whole), each record is parsed once as a
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
    """Every record of an uncompressed TFRecord file; ``CorruptLogError`` if the file
    is truncated or a checksum does not match (nothing of it is returned then)."""
    data = Path(path).read_bytes()
    records, pos, end, index = [], 0, len(data), 0
    unpack = struct.unpack_from
    while pos < end:
        if pos + 12 > end:
            raise CorruptLogError(f"truncated: record {index} header cut at byte {pos} of {end}")
        (length,) = unpack("<Q", data, pos)
        if verify and unpack("<I", data, pos + 8)[0] != _masked_crc(data[pos:pos + 8]):
            raise CorruptLogError(f"corrupt: record {index} length checksum mismatch at byte {pos}")
        start = pos + 12
        stop = start + length
        if stop + 4 > end:
            raise CorruptLogError(f"truncated: record {index} needs {length} bytes at byte {start}, "
                                  f"file has {end}")
        payload = data[start:stop]
        if verify and unpack("<I", data, stop)[0] != _masked_crc(payload):
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
    Raises ``CorruptLogError`` for a file that cannot be read whole.

    The loop runs once per logged request, so it stays in plain Python lists:
    numpy per record would cost more than the parsing."""
    from tensorflow_serving.apis import prediction_log_pb2

    raws = read_tfrecords(path)
    groups: Dict[Tuple[str, Optional[int]], Tuple[list, list, list, list, list]] = {}
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
            request = record.predict_log.request
            inputs = request.inputs
            if len(inputs) == 1 and request.model_spec.signature_name in ("", "serving_default"):
                tensor = inputs["examples"] if "examples" in inputs else next(iter(inputs.values()))
                if tensor.dtype == 7 and tensor.string_val:
                    serialized = tensor.string_val
                    response = record.predict_log.response
                    if response.model_spec.HasField("version"):
                        version = response.model_spec.version.value
                    outputs = response.outputs
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
            group = groups[(spec.name, version)] = ([], [], [], [], [])
        n = len(serialized)
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
    chunks = [Chunk(name, version, g[0], np.asarray(g[1], np.float32), g[2],
                    np.asarray(g[3], np.int32), np.asarray(g[4], np.int64))
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


def iter_files(files: List[Path]) -> Iterator[Tuple[Path, Optional[List[Chunk]], int, Optional[str]]]:
    """(path, chunks, records, error) per file; a bad file has chunks None and its error."""
    for path in files:
        try:
            chunks, records = decode_file(path)
        except (CorruptLogError, OSError) as exc:
            yield path, None, 0, str(exc)
            continue
        yield path, chunks, records, None
