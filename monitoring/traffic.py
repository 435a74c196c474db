"""A window's traffic per served model version: its rows fed to TFDV's statistics,
the model's outputs, the rows whose labels came back, the rejected requests.

``read_window`` reads every part of a window (``monitoring.window``), in this
process or split across forked workers whose TFDV accumulators are merged.
"""
import csv
import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from core import features as F
from core.config import Settings, require_local
from core.storage import Location
from monitoring import bias as bias_lib, checks, logfiles, probing, rejections as rejections_lib, window as window_lib
from monitoring.sample import RowSample

log = logging.getLogger("tfxops.monitoring")
DECODE_ROWS = 65_536          # rows per RecordBatch fed to the statistics
WORKER_MIN_BYTES = 20 * 2**20  # below this many bytes of logs per worker, one process reads faster

Feedback = Dict[Tuple[str, int], float]      # (request_id, row) -> tips
FEEDBACK_NEEDS_LOCAL = "the monitor lists and reads the feedback CSVs on a local disk"


class EngineError(RuntimeError):
    """A window an engine (``monitoring.engine``) could not read: it stays open for
    the next pass."""


def load_feedback(feedback_dir: Location) -> Feedback:
    """``(request_id, row) -> tips`` from every CSV in ``feedback_dir`` (columns
    ``request_id``, ``tips``, optional ``row``, default 0); later files win. The
    directory must be on a local disk: a URI is a ``ConfigError`` naming feedback_dir."""
    directory = require_local("feedback_dir", feedback_dir, FEEDBACK_NEEDS_LOCAL)
    labels: Feedback = {}
    if not directory.is_dir():
        return labels
    for path in sorted(directory.glob("*.csv")):
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "request_id" not in reader.fieldnames or F.LABEL_KEY not in reader.fieldnames:
                log.warning("feedback file %s lacks request_id/%s columns: ignored", path, F.LABEL_KEY)
                continue
            for row in reader:
                try:
                    labels[(row["request_id"], int(row.get("row") or 0))] = float(row[F.LABEL_KEY])
                except (TypeError, ValueError):
                    continue
    return labels


class Statistics(Protocol):
    """A version's statistics as an engine produces them: fed batch by batch while
    the window is read (``checks.StatsAccumulator``; ``add``), or computed elsewhere
    and handed over (``beam_engine``)."""
    rows: int

    def result(self):
        """The DatasetFeatureStatisticsList of the version's rows."""


@dataclasses.dataclass
class VersionTraffic:
    """What one model version served in the window (answered and rejected requests)."""
    model_name: str
    version: Optional[int]
    stats: Statistics
    pending: List[bytes] = dataclasses.field(default_factory=list)
    predictions: List[np.ndarray] = dataclasses.field(default_factory=list)
    requests: int = 0                      # answered requests
    rows: int = 0                          # rows in the statistics (answered and rejected)
    labelled: List[Tuple[bytes, float, float]] = dataclasses.field(default_factory=list)
    rejections: rejections_lib.Tally = dataclasses.field(default_factory=rejections_lib.Tally)
    types: Dict = dataclasses.field(default_factory=dict)      # column -> Arrow type fed so far
    signatures: Dict[str, int] = dataclasses.field(default_factory=dict)   # answered rows per logged signature
    output_stats: object = None            # statistics of the served outputs, when an engine computed them
    slices: bias_lib.SliceTally = dataclasses.field(default_factory=bias_lib.SliceTally)   # sensitive slices
    sample: RowSample = dataclasses.field(default_factory=RowSample)   # answered rows the attribution check explains
    clients: probing.ClientTally = dataclasses.field(default_factory=probing.ClientTally)   # per client (issue 16 part 3)

    def flush(self, decoder, force: bool = False) -> None:
        while self.pending and (force or len(self.pending) >= DECODE_ROWS):
            batch, self.pending = self.pending[:DECODE_ROWS], self.pending[DECODE_ROWS:]
            decoded = decoder.decode(batch)
            self.slices.add(decoded)
            self.add_batch(decoded)

    def add_batch(self, batch) -> None:
        """Into the statistics, without a column whose type differs from what was fed
        before (TFDV refuses mixed types; only rows clients sent by hand can differ)."""
        names, types = batch.schema.names, batch.schema.types
        keep = [i for i, name in enumerate(names) if self.types.setdefault(name, types[i]) == types[i]]
        if len(keep) < len(names):
            import pyarrow as pa

            log.warning("version %s: columns %s of another type than before left out of a batch",
                        self.version, sorted(set(names) - {names[i] for i in keep}))
            batch = pa.RecordBatch.from_arrays([batch.column(i) for i in keep], [names[i] for i in keep])
        self.stats.add(batch)

    @property
    def all_requests(self) -> int:
        return self.requests + self.rejections.rejected

    def served_outputs(self) -> np.ndarray:
        return np.concatenate(self.predictions) if self.predictions else np.zeros(0, np.float32)

    def served_statistics(self):
        """Statistics of the served outputs, a ``checks.PREDICTION`` feature (NaN:
        missing): as an engine computed them, else of ``served_outputs``."""
        if self.output_stats is not None:
            return self.output_stats
        return checks.statistics_of({checks.PREDICTION: self.served_outputs()})

    def add_signatures(self, rows: Dict[str, int]) -> None:
        for name, n in rows.items():
            self.signatures[name] = self.signatures.get(name, 0) + n

    def rows_by_signature(self) -> Dict[str, int]:
        """The rows in the statistics (answered and rejected) per logged signature name."""
        out = dict(self.signatures)
        for name, n in self.rejections.rows_by_signature.items():
            out[name] = out.get(name, 0) + n
        return out

    def counted(self) -> "VersionTraffic":
        """What this version counted, as it travels between processes: without its
        statistics (their rows: ``stats.rows``) and rows pending decoding."""
        return dataclasses.replace(self, stats=None, pending=[], predictions=[self.served_outputs()], types={})

    def merge(self, other: "VersionTraffic") -> None:
        """Add what ``other`` (the same version, read elsewhere) counted; not its statistics."""
        self.predictions.extend(other.predictions)
        self.requests += other.requests
        self.rows += other.rows
        self.add_signatures(other.signatures)
        self.labelled.extend(other.labelled)
        self.rejections.merge(other.rejections)
        self.slices.merge(other.slices)
        self.sample.merge(other.sample)
        self.clients.merge(other.clients)


@dataclasses.dataclass
class WindowTraffic:
    """What reading a window's files gave: the traffic per (model, version), the files
    read (for the checkpoint), those that could not be, and the rejected calls that
    name no model version."""
    versions: Dict[Tuple[str, Optional[int]], VersionTraffic] = dataclasses.field(default_factory=dict)
    file_results: Dict[str, Dict] = dataclasses.field(default_factory=dict)
    unreadable: List[logfiles.Unreadable] = dataclasses.field(default_factory=list)
    unattributed: rejections_lib.Tally = dataclasses.field(default_factory=rejections_lib.Tally)
    new_statistics: Callable[[], Statistics] = checks.StatsAccumulator    # a version's, when first seen
    slicing: Optional[bias_lib.SliceSpec] = None                          # what each version's tally counts
    shadow_records: Optional[int] = None    # shadow answers read (None: not counted by this engine)

    def of(self, model_name: str, version: Optional[int]) -> VersionTraffic:
        key = (model_name, version)
        if key not in self.versions:
            self.versions[key] = VersionTraffic(model_name, version, self.new_statistics(),
                                                slices=bias_lib.SliceTally(self.slicing))
        return self.versions[key]

    def in_order(self) -> List[VersionTraffic]:
        """By model name, then version."""
        return [self.versions[k] for k in sorted(self.versions, key=lambda k: (k[0], k[1] or 0))]

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.versions.values())

    @property
    def requests(self) -> int:
        """Every request of the window, those that named no model version included."""
        return sum(v.all_requests for v in self.versions.values()) + self.unattributed.rejected

    def ends(self) -> Dict[str, int]:
        """File name -> the byte offset its read ended at."""
        return {name: r["offset"] for name, r in self.file_results.items()}


def _add_answered(traffic: VersionTraffic, chunk: window_lib.Chunk, decoder, feedback: Feedback) -> int:
    if not chunk.serialized:
        return 0
    decoder.check(chunk.serialized)
    traffic.pending.extend(chunk.serialized)
    traffic.predictions.append(chunk.predictions)
    traffic.slices.queue(chunk.predictions)
    traffic.sample.add(chunk.serialized, chunk.request_ids, chunk.row_in_request)
    traffic.clients.add(chunk)
    traffic.requests += int((chunk.row_in_request == 0).sum())
    traffic.rows += len(chunk.serialized)
    traffic.add_signatures(chunk.signatures)
    if feedback:
        for i, rid in enumerate(chunk.request_ids):
            tips = feedback.get((rid, int(chunk.row_in_request[i])))
            if tips is not None:
                traffic.labelled.append((chunk.serialized[i], float(chunk.predictions[i]), tips))
    traffic.flush(decoder)
    return len(chunk.serialized)


def _add_rejected(traffic: VersionTraffic, part: Optional[window_lib.Rejected], rows_decoder) -> int:
    """Rejected requests: counted, and what their clients sent joins the statistics."""
    if part is None:
        return 0
    traffic.clients.add_rejected(part)
    batch = traffic.rejections.add(part, rows_decoder)
    if batch is None or not batch.num_rows:
        return 0
    traffic.add_batch(rejections_lib.for_statistics(batch))
    traffic.rows += batch.num_rows
    return batch.num_rows


@dataclasses.dataclass
class Decoders:
    """Examples -> Arrow: answered rows with ``schema``'s types (inferred without
    one: ``window.ExampleDecoder``), rows of rejected requests with ``rows_schema``'s
    (not read without one)."""
    examples: window_lib.ExampleDecoder
    rows: Optional[rejections_lib.RowsDecoder]

    @classmethod
    def of(cls, schema=None, rows_schema=None) -> "Decoders":
        return cls(window_lib.ExampleDecoder(schema),
                   rejections_lib.RowsDecoder(rows_schema) if rows_schema is not None else None)


def add_part(read: WindowTraffic, decoded: window_lib.Decoded, decoders: Decoders, feedback: Feedback) -> None:
    """One decoded part into ``read``: its rows per version, or the reason it could
    not be read; raises ``window.NeedsInference`` when the examples do not fit the
    decoding schema. Rows still pending decoding stay in their ``VersionTraffic``
    (``flush``)."""
    name = decoded.part.name
    if decoded.error is not None:
        log.warning("cannot read log file %s now: %s", name, decoded.error)
        read.unreadable.append(logfiles.Unreadable.of(name, decoded.error))
        return
    read.shadow_records = (read.shadow_records or 0) + decoded.shadow_records
    rows = 0
    for chunk in decoded.chunks:
        if chunk.version is None and not chunk.serialized:     # refused before a version was chosen
            read.unattributed.add(chunk.rejected, None)
            continue
        traffic = read.of(chunk.model_name, chunk.version)
        rows += _add_answered(traffic, chunk, decoders.examples, feedback)
        rows += _add_rejected(traffic, chunk.rejected, decoders.rows)
    read.file_results[name] = _analysed(decoded.read, rows)


def read_parts(parts: List[window_lib.Part], feedback: Feedback, schema=None, rows_schema=None,
               slicing: Optional[bias_lib.SliceSpec] = None) -> WindowTraffic:
    """Decode and accumulate statistics for ``parts``, one at a time (``add_part``)."""
    decoders = Decoders.of(schema, rows_schema)
    read = WindowTraffic(slicing=slicing, shadow_records=0)
    for decoded in window_lib.iter_parts(parts):
        add_part(read, decoded, decoders, feedback)
    for traffic in read.versions.values():
        traffic.flush(decoders.examples, force=True)
    return read


def _analysed(read: window_lib.PartRead, rows: int) -> Dict:
    """What the checkpoint records of a part read whole (``window.commit_window``)."""
    return {"status": "analysed", "records": len(read.records), "rows": rows, "offset": read.end,
            "crc": read.crc, "inode": read.inode}


@dataclasses.dataclass
class ShareRead:
    """A worker's share of the window, as it travels back (pickled, no generators)."""
    versions: Dict[Tuple[str, Optional[int]], Dict]
    file_results: Dict[str, Dict]
    unreadable: List[logfiles.Unreadable]
    unattributed: rejections_lib.Tally
    shadow_records: Optional[int]


def _read_share(parts: List[window_lib.Part], feedback: Feedback, schema=None, rows_schema=None, slicing=None):
    """``read_parts`` in a worker process: a ``ShareRead``, or the reason to decode
    with inferred types (``window.NeedsInference``'s text)."""
    try:
        read = read_parts(parts, feedback, schema, rows_schema, slicing)
    except window_lib.NeedsInference as exc:
        return str(exc)
    versions = {key: {"accumulators": t.stats.accumulators, "rows_in_stats": t.stats.rows,
                      "traffic": t.counted()} for key, t in read.versions.items()}
    return ShareRead(versions, read.file_results, read.unreadable, read.unattributed, read.shadow_records)


def _split(parts: List[window_lib.Part], n: int) -> List[List[window_lib.Part]]:
    """Parts in ``n`` lists of about equal bytes (largest first, to the lightest)."""
    buckets = [[] for _ in range(n)]
    sizes = [0] * n
    for part in sorted(parts, key=lambda p: -p.path.stat().st_size):
        i = sizes.index(min(sizes))
        buckets[i].append(part)
        sizes[i] += part.path.stat().st_size
    return [sorted(b, key=lambda p: p.name) for b in buckets if b]


def workers_for(settings: Settings, files: List[Path]) -> int:
    """``monitor_workers`` (default: one per CPU, at most 4), at most one per file
    and one per ``WORKER_MIN_BYTES`` of logs (a worker's start-up costs more than it
    saves on less)."""
    wanted = settings.monitor_workers or min(4, os.cpu_count() or 1)
    total = sum(p.stat().st_size for p in files if p.exists())
    return max(1, min(wanted, len(files), total // WORKER_MIN_BYTES + 1))


def read_window(win: window_lib.Window, feedback: Feedback, workers: int = 1, schema=None,
                slicing: Optional[bias_lib.SliceSpec] = None) -> WindowTraffic:
    """All files of the window; with ``workers`` > 1, split across forked processes
    (decoding is Python- and C++-bound per record) and their TFDV accumulators merged.
    ``schema`` only speeds decoding up: examples that do not fit it are decoded
    again with inferred types (see ``window.ExampleDecoder``); rows of rejected
    requests are always read with its types. ``slicing``: the sensitive slices each
    version tallies (``monitoring.bias``; None: none)."""
    if workers <= 1:
        try:
            return read_parts(win.parts, feedback, schema, schema, slicing)
        except window_lib.NeedsInference as exc:
            if schema is None:
                raise
            log.info("decoding with inferred types: %s", exc)
            return read_parts(win.parts, feedback, None, schema, slicing)
    import multiprocessing

    shares = _split(win.parts, workers)
    with multiprocessing.get_context("fork").Pool(len(shares)) as pool:
        results = pool.starmap(_read_share, [(share, feedback, schema, schema, slicing) for share in shares])
        if any(isinstance(r, str) for r in results):
            log.info("decoding with inferred types: %s", next(r for r in results if isinstance(r, str)))
            results = pool.starmap(_read_share, [(share, feedback, None, schema, slicing) for share in shares])
    return _merged(results)


def _merged(shares: List[ShareRead]) -> WindowTraffic:
    """The workers' shares as one window: counts added, TFDV accumulators merged."""
    read = WindowTraffic()
    partial: Dict[Tuple[str, Optional[int]], list] = {}
    for share in shares:
        if share.shadow_records is not None:
            read.shadow_records = (read.shadow_records or 0) + share.shadow_records
        read.file_results.update(share.file_results)
        read.unreadable.extend(share.unreadable)
        read.unattributed.merge(share.unattributed)
        for key, part in share.versions.items():
            traffic = read.of(*key)
            partial.setdefault(key, []).append(part["accumulators"])
            traffic.stats.rows += part["rows_in_stats"]
            traffic.merge(part["traffic"])
    for key, traffic in read.versions.items():
        acc = traffic.stats
        acc.accumulators = [gen.merge_accumulators([a[i] for a in partial[key]])
                            for i, gen in enumerate(acc.generators)]
    read.unreadable.sort(key=lambda u: u.file)
    read.file_results = dict(sorted(read.file_results.items()))
    return read
