"""Which request logs a run reads, the checkpoint, and decoding them to columns.

The checkpoint (``<monitor_dir>/state.json``, replaced atomically) lists every log
file analysed, with the byte offset where its analysed records end, the CRC-32C of
those bytes and its inode. A run first *opens* a window of parts (at most
``monitor_max_files``): the closed log files not in the checkpoint, read from byte
0, and the analysed ones whose size is no longer that offset, read from it (a
shipper or a proxy that appends whole records to a file the monitor has read: only
the records after the offset are new). The window is written to the checkpoint
before anything is read; once its files are read, where each read ended is written
too, so a run that resumes the window reads exactly the same bytes. A run that
completes commits the window (each file's offset moves to the end of its complete
records); a run that crashes leaves it open, and the next run analyses exactly that
window again: no request is counted twice or lost, and files that arrived meanwhile
go to the window after it.

A part is read only if the file still holds what was analysed: a file smaller than
its offset, or whose analysed bytes differ now (replaced by another file, rewritten
in place), is ``ReplacedLogError``: its records cannot be told from those already
counted, so ``monitoring.logfiles`` quarantines it. A file replaced by one with the
same analysed bytes and more (``rsync`` without ``--inplace`` makes a new inode on
every sync) is read on from the offset. A file whose size equals its offset is not
looked at again (a same-size rewrite goes unnoticed until it grows). Entries of
checkpoints written before offsets were recorded are never re-read.

Decoding is the hot path: the TFRecord framing is scanned
by ``core.request_log.scan_frames`` (CRCs checked: a cut, empty or corrupt part
is detected before any of it is counted; ``monitoring.logfiles`` decides whether
it is still being written, and retried by the next run, or corrupt, and
quarantined), each record is decoded once by ``core.request_log.decode_records``
(the one reading of the format: the serialized tf.Examples of a ``serving_default``
predict request as logged, other request forms (``serving_raw`` tensors,
classify/regress, rejected calls) turned into tf.Examples), and the rows are
decoded in C++ by tfx_bsl into an Arrow RecordBatch (types inferred, as
StatisticsGen infers them from CsvExampleGen's examples).
"""
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import google_crc32c
import numpy as np

from core import features as F, request_log

STATE_VERSION = 1


class CorruptLogError(ValueError):
    """A log file that cannot be read completely."""


class TruncatedLogError(CorruptLogError):
    """A log file that is empty, or whose framing ends in a cut (or not yet filled)
    last record: a file still being written, or one torn for good;
    ``monitoring.logfiles`` tells which."""


class ReplacedLogError(CorruptLogError):
    """An analysed log file that no longer holds what was analysed: smaller than the
    offset analysed up to, or those bytes differ (another file under its name)."""


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
        # name -> {"status", "records", "rows", "window", "offset", "crc", "inode"} (see
        # ``commit_window``; quarantined files: "error", "moved_to" too)
        self.data.setdefault("files", {})
        self.data.setdefault("open_window", None)   # {"id", "files": {name: Part.as_json()}, "opened"}
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

    def start_action(self, window_id: str, action: str, version: Optional[int]) -> None:
        """Saved before the action starts: a window never acts twice, even after a crash."""
        self.data["actions"].append({"window": window_id, "action": action, "time": time.time(),
                                     "version": version, "state": "started"})
        self.save()

    def finish_action(self, window_id: str, ok: bool, outcome: Dict) -> None:
        self.action_for_window(window_id).update(state="done" if ok else "failed", outcome=outcome)
        self.save()

    # drift baselines ---------------------------------------------------------
    def previous_statistics(self, model_name: str) -> Optional[str]:
        """The statistics file of the last committed window of ``model_name``'s served version."""
        return self.data["previous_statistics"].get(model_name)

    def set_previous_statistics(self, model_name: str, path: str) -> None:
        """The next window's drift baseline (saved with the window's commit)."""
        self.data["previous_statistics"][model_name] = path


@dataclasses.dataclass(frozen=True)
class Part:
    """What of a log file a window reads: from ``start`` (where the records analysed
    by earlier windows end: 0 for a new file) to its last complete record, or to
    ``end`` once a read in this window fixed it."""
    path: Path
    start: int = 0
    prefix_crc: int = 0                # CRC-32C of the file's bytes before ``start``
    inode: Optional[int] = None        # the file's inode when they were read
    end: Optional[int] = None

    @property
    def name(self) -> str:
        return self.path.name

    def as_json(self) -> Dict:
        return {"start": self.start, "prefix_crc": self.prefix_crc, "inode": self.inode, "end": self.end}

    @classmethod
    def from_json(cls, path: Path, data: Dict) -> "Part":
        return cls(path, data.get("start", 0), data.get("prefix_crc", 0), data.get("inode"), data.get("end"))


@dataclasses.dataclass
class Window:
    id: str
    parts: List[Part]
    resumed: bool

    @property
    def files(self) -> List[Path]:
        return [part.path for part in self.parts]


def open_window(checkpoint: Checkpoint, log_dir: Path, max_files: int, persist: bool = True) -> Window:
    """The open window of a crashed run, or a new one of the unread parts (recorded in
    the checkpoint unless ``persist`` is false: a dry run)."""
    log_dir = Path(log_dir)
    current = checkpoint.data["open_window"]
    if current:
        files = current["files"]
        specs = files if isinstance(files, dict) else {name: {} for name in files}   # before offsets
        parts = [Part.from_json(log_dir / name, spec) for name, spec in specs.items()]
        return Window(current["id"], [p for p in parts if p.path.exists()], resumed=True)
    parts = unread_parts(checkpoint.data["files"], log_dir)[:max(1, max_files)]
    if not parts:
        return Window("", [], resumed=False)
    digest = hashlib.sha1("\n".join(f"{p.name}@{p.start}" for p in parts).encode()).hexdigest()[:8]
    window_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + digest
    if persist:
        checkpoint.data["open_window"] = {"id": window_id, "files": {p.name: p.as_json() for p in parts},
                                          "opened": time.time()}
        checkpoint.save()
    return Window(window_id, parts, resumed=False)


def unread_parts(analysed: Dict[str, Dict], log_dir: Path) -> List[Part]:
    """The closed log files not in the checkpoint (from byte 0), and the analysed ones
    whose size is no longer the offset analysed up to (from that offset: grown, or
    shrunk and then reported), oldest first. Quarantined files are never read again."""
    parts = []
    for path in request_log.closed_log_files(log_dir):
        entry = analysed.get(path.name)
        if entry is None:
            parts.append(Part(path))
        elif entry.get("status") == "analysed" and "offset" in entry and _size(path) not in (None, entry["offset"]):
            parts.append(Part(path, entry["offset"], entry["crc"], entry.get("inode")))
    return parts


def _size(path: Path) -> Optional[int]:
    try:
        return path.stat().st_size
    except OSError:          # removed meanwhile
        return None


def fix_ends(checkpoint: Checkpoint, window: Window, ends: Dict[str, int]) -> None:
    """Record where this window's read of each file ended (``ends``: name -> byte
    offset), so a run that resumes the window reads exactly the same records."""
    specs = checkpoint.data["open_window"]["files"]
    if not isinstance(specs, dict):
        return                      # a window opened before offsets were recorded
    changed = {name: end for name, end in ends.items() if name in specs and specs[name].get("end") != end}
    for name, end in changed.items():
        specs[name]["end"] = end
    if changed:
        checkpoint.save()


def release_window(checkpoint: Checkpoint) -> None:
    """Close the open window without committing anything (none of its files could be
    read yet): they are offered again to the next run."""
    checkpoint.data["open_window"] = None
    checkpoint.save()


def commit_window(checkpoint: Checkpoint, window: Window, file_results: Dict[str, Dict]) -> None:
    """The window's files are analysed (or quarantined). A file read on from its offset
    adds its new records and rows to those analysed before; a quarantined one keeps
    what was analysed of it before, beside the reason."""
    files = checkpoint.data["files"]
    for name, result in file_results.items():
        before = files.get(name, {})
        entry = dict(before, **result, window=window.id)
        if result["status"] == "analysed" and before.get("status") == "analysed":
            entry["records"] = before.get("records", 0) + result["records"]
            entry["rows"] = before.get("rows", 0) + result["rows"]
        files[name] = entry
    checkpoint.data["windows"].append(window.id)
    checkpoint.data["open_window"] = None
    checkpoint.save()


# ------------------------------------------------------------------ reading a part
@dataclasses.dataclass
class PartRead:
    """The complete records of a part, and what the checkpoint keeps of the file."""
    records: List[bytes]
    start: int
    end: int                        # where they end: the file's new offset
    crc: int                        # CRC-32C of the file's bytes before ``end``
    inode: int


def read_part(part: Part) -> PartRead:
    """The records of ``part`` (framing scanned by ``core.request_log.scan_frames``).
    Nothing of a bad part is returned: ``ReplacedLogError`` when the file no longer
    holds what was analysed of it; ``TruncatedLogError`` when it is empty or its
    framing ends in a cut (see ``scan_frames``); ``CorruptLogError`` when a checksum
    fails with more data after it."""
    with open(part.path, "rb") as handle:
        inode = os.fstat(handle.fileno()).st_ino
        data = handle.read()
    _check_unchanged(part, data, inode)
    stop = len(data) if part.end is None else part.end
    frames = request_log.scan_frames(data, part.start, stop)
    if frames.tail == request_log.CORRUPT:
        raise CorruptLogError(f"corrupt: {frames.detail}")
    if frames.tail == request_log.CUT:
        raise TruncatedLogError(f"truncated: {frames.detail}")
    if not data:
        raise TruncatedLogError("empty: nothing written yet (a file just created)")
    crc = google_crc32c.extend(part.prefix_crc, data[part.start:stop]) if part.start \
        else google_crc32c.value(data if stop == len(data) else data[:stop])
    return PartRead(frames.records, part.start, frames.end, crc, inode)


def _check_unchanged(part: Part, data: bytes, inode: int) -> None:
    """``ReplacedLogError`` unless the file still holds the bytes analysed before
    ``part.start`` (and, in a resumed window, those this window read)."""
    if not part.start and part.end is None:
        return
    new = f" (a new file: inode {inode}, was {part.inode})" if part.inode not in (None, inode) else ""
    if len(data) < max(part.start, part.end or 0):
        raise ReplacedLogError(f"shrank: {part.start} bytes of it were analysed before, it now has "
                               f"{len(data)}{new}")
    if part.start and google_crc32c.value(data[:part.start]) != part.prefix_crc:
        raise ReplacedLogError(f"replaced: the first {part.start} bytes, analysed before, differ now{new}")


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
    clients: List[str] = dataclasses.field(default_factory=list)   # per row: who sent it (``monitoring.probing``)


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
    clients: List[str] = dataclasses.field(default_factory=list)       # per request: who sent it

    def add(self, code: str, message: str, timestamp: int, rows: List[bytes], signature: str) -> None:
        self.rows.extend(rows)
        self.signatures.append(signature)
        self.row_counts.append(len(rows))
        self.codes.append(code)
        self.messages.append(message)
        self.timestamps.append(timestamp)


def _prediction_values(response, rows: int) -> List[float]:
    outputs = response.outputs
    if outputs:
        tensor = outputs[F.PREDICTION_KEY] if F.PREDICTION_KEY in outputs else outputs[sorted(outputs)[0]]
        values = tensor.float_val or tensor.double_val
        if len(values) == rows:
            return values
        if rows and values and len(values) % rows == 0:   # [rows, k]: the last column
            k = len(values) // rows
            return [values[i * k + k - 1] for i in range(rows)]
    return [float("nan")] * rows


def _scalar(prediction) -> float:
    if isinstance(prediction, dict):
        for key in (F.PREDICTION_KEY, "1", b"1"):
            if key in prediction:
                return _scalar(prediction[key])
        return _scalar(next(iter(prediction.values()))) if prediction else float("nan")
    if isinstance(prediction, (list, tuple)):
        return _scalar(prediction[-1]) if prediction else float("nan")
    try:
        return float(prediction)
    except (TypeError, ValueError):
        return float("nan")


def decode_records(raws: List[bytes], shadow: bool = False) -> List[Chunk]:
    """Serialized PredictionLogs (decoded by ``core.request_log.decode_records``) as
    chunks per (model, version). Raises ``CorruptLogError`` for a record that is not
    one. A rejected call goes to its chunk's ``rejected`` part whatever its request
    holds (nothing, bytes that are not tf.Examples, hostile shapes): it never makes
    the file unreadable. A chunk counts its answered rows per logged signature name
    (``monitoring.contract`` judges a feature only in the rows of the signatures
    that take it). Shadow answers (``core.request_log.SHADOW_TAG``: never returned to
    a caller) are left out, as they are no served traffic; ``shadow``: only them
    (``monitoring.agreement``)."""
    return decode_counted(raws, shadow)[0]


def decode_counted(raws: List[bytes], shadow: bool = False) -> Tuple[List[Chunk], int]:
    """``decode_records``, and how many records it left out as shadow answers (or,
    with ``shadow``, as served ones)."""
    try:
        return _chunks(request_log.decode_records(raws), shadow)
    except request_log.UnreadableRecord as exc:
        raise CorruptLogError(f"corrupt: {exc}") from None


def _chunks(calls: Iterator[request_log.LoggedRequest], shadow: bool = False) -> Tuple[List[Chunk], int]:
    """The loop runs once per logged request, so it stays in plain Python lists:
    numpy per record would cost more than the parsing."""
    groups: Dict[Tuple[str, Optional[int]], Tuple[list, list, list, list, list, dict, list]] = {}
    rejected: Dict[Tuple[str, Optional[int]], Rejected] = {}
    skipped = 0
    for call in calls:
        if call.shadow is not shadow:
            skipped += 1
            continue
        key = (call.model_name, call.model_version)
        if call.error is not None:
            part = rejected.get(key) or rejected.setdefault(key, Rejected())
            part.add(*call.error, call.timestamp, call.rows, call.signature_name)
            part.clients.append(call.client)
            continue
        group = groups.get(key)
        if group is None:
            group = groups[key] = ([], [], [], [], [], {}, [])
        serialized = call.rows
        n = len(serialized)
        counts, signature = group[5], call.signature_name
        counts[signature] = counts.get(signature, 0) + n
        group[0].extend(serialized)
        group[1].extend(_scores(call, n))
        if n == 1:
            group[2].append(call.request_id)
            group[3].append(0)
            group[4].append(call.timestamp)
            group[6].append(call.client)
        else:
            group[2].extend([call.request_id] * n)
            group[3].extend(range(n))
            group[4].extend([call.timestamp] * n)
            group[6].extend([call.client] * n)
    for key in rejected.keys() - groups.keys():
        groups[key] = ([], [], [], [], [], {}, [])
    return [Chunk(name, version, g[0], np.asarray(g[1], np.float32), g[2],
                  np.asarray(g[3], np.int32), np.asarray(g[4], np.int64), rejected.get((name, version)), g[5], g[6])
            for (name, version), g in groups.items()], skipped


def _scores(call: request_log.LoggedRequest, rows: int) -> Sequence[float]:
    """One prediction score per row of an answered call (NaN when unknown): the
    ``probabilities`` output of a ``serving_default`` predict call read as logged,
    else a scalar of each row's prediction."""
    if call.source == request_log.EXAMPLES:
        response = call.record.predict_log.response
        outputs = response.outputs
        values = outputs[F.PREDICTION_KEY].float_val if F.PREDICTION_KEY in outputs else None
        return values if values is not None and len(values) == rows else _prediction_values(response, rows)
    try:
        predictions = [_scalar(p) for p in call.predictions]
    except Exception as exc:  # noqa: BLE001 - outputs that are no tensors
        raise CorruptLogError(f"corrupt: the response of request {call.request_id!r} cannot be decoded "
                              f"({exc})") from None
    return predictions if len(predictions) == rows else [float("nan")] * rows


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


@dataclasses.dataclass
class Decoded:
    """One part of a window, decoded: its chunks and what was read, or why it could not be."""
    part: Part
    chunks: Optional[List[Chunk]] = None
    read: Optional[PartRead] = None
    error: Optional[Exception] = None     # CorruptLogError (and its kinds) or the OSError of reading
    shadow_records: int = 0               # shadow answers left out of ``chunks``


def iter_parts(parts: List[Part]) -> Iterator[Decoded]:
    for part in parts:
        try:
            read = read_part(part)
            chunks, shadow_records = decode_counted(read.records)
            decoded = Decoded(part, chunks, read, shadow_records=shadow_records)
        except (CorruptLogError, OSError) as exc:
            decoded = Decoded(part, error=exc)
        yield decoded
