"""The monitor's ``beam`` engine (``monitor_engine=beam``, ``tfxops monitor --engine beam``):
the data-parallel part of a window as one Beam job, run with ``beam_args``
(DirectRunner without any; the portable runner, Dataflow, Flink or Spark with the
same arguments as the pipeline's).

The job:

1. **read** each part of the window in its own ``ReadPart`` call: the framing,
   CRCs and records through ``monitoring.window`` (``core.request_log``), so a
   corrupt, cut or replaced file is skipped and reported exactly as the local
   engine reports it (``monitoring.logfiles`` sorts it into incomplete and
   quarantined on the driver); each record decoded to rows, and the rows to
   Arrow by the schema (``traffic.add_part``: the same counting as the local
   engine, file by file);
2. **statistics**: every batch carries a ``SLICE_COLUMN`` naming its (model,
   version), and TFDV's ``GenerateStatistics`` computes the statistics per slice
   (``slicing_util.get_feature_value_slicer`` on that column); the slice column
   and TFDV's all-examples slice are dropped from the result; the same for the
   served outputs (``checks.PREDICTION``, for the prediction drift), so they
   never travel to the driver row by row;
3. **feedback**: answered rows keyed by request id, joined with the labels that
   came back by ``CoGroupByKey`` (only when there are labels);
4. **row sample**: each part's sample of served rows (``monitoring.sample``, for the
   attribution drift check) combined per version by ``CombinePerKey``: at most
   ``sample.SAMPLE_ROWS`` rows per version reach the driver.

The statistics, and the counts, files and labelled rows as pickled records, are
written by the job under ``--temp_location`` when ``beam_args`` give one, else
under ``<monitor_dir>/beam``, and read back by the driver, which assembles the same
``traffic.WindowTraffic`` as the local engine. Everything after it (baselines,
checks, policy, actions, report, MLMD) is the monitor's, unchanged. The workers
open the window's log files by their paths: on a runner whose workers run on other
machines, the request-log directory must be mounted at the same path there.

Like the local engine, a window whose examples do not fit the decoding schema is
read again with inferred types; one whose examples give a feature two types in
different files cannot be summed by TFDV and fails with ``EngineError`` (the
local engine leaves the later type out of its batch).
"""
import contextlib
import dataclasses
import json
import logging
import pickle
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems

from monitoring import bias as bias_lib, checks, traffic as traffic_lib, window as window_lib
from monitoring.sample import RowSample

log = logging.getLogger("tfxops.monitoring")
SLICE_COLUMN = "__tfxops_model_version__"    # (model, version) of a row, for the slicing function
VERSION, FILE, UNREADABLE, UNATTRIBUTED, LABELLED, NEEDS_INFERENCE = (
    "version", "file", "unreadable", "unattributed", "labelled", "needs_inference")
RESULTS, OUTPUTS, ANSWERED = "results", "outputs", "answered"     # the ReadPart outputs besides the batches
SAMPLES, SAMPLE = "samples", "sample"     # each part's row samples, combined per version in the job
Key = Tuple[str, Optional[int]]


def slice_value(key: Key) -> str:
    """The ``SLICE_COLUMN`` value of a (model name, version)."""
    return json.dumps(list(key))


@dataclasses.dataclass
class CollectedBatches:
    """A version's batches of one part, as ``ReadPart`` collects them for the job's statistics."""
    batches: List = dataclasses.field(default_factory=list)
    rows: int = 0

    def add(self, record_batch) -> None:
        self.batches.append(record_batch)
        self.rows += record_batch.num_rows


@dataclasses.dataclass
class ComputedStatistics:
    """A version's statistics as the job computed them (``traffic.Statistics``)."""
    statistics: object      # DatasetFeatureStatisticsList
    rows: int

    def result(self):
        return self.statistics


def with_slice(batch, value: str):
    """``batch`` with a ``SLICE_COLUMN`` of ``value`` in every row."""
    import pyarrow as pa

    column = pa.array([[value.encode()]] * batch.num_rows, type=pa.large_list(pa.large_binary()))
    return pa.RecordBatch.from_arrays(list(batch.columns) + [column], list(batch.schema.names) + [SLICE_COLUMN])


def _read_part(index: int, part: window_lib.Part, decoders: traffic_lib.Decoders, join: bool,
               slicing: Optional[bias_lib.SliceSpec] = None) -> Iterator:
    """``ReadPart``'s work on the window's ``index``-th part: its batches (each with
    its slice column) and its tagged results (the counts with the sensitive slices'
    tallies, ``slicing``)."""
    read = traffic_lib.WindowTraffic(new_statistics=CollectedBatches, slicing=slicing)
    (decoded,) = window_lib.iter_parts([part])
    try:
        traffic_lib.add_part(read, decoded, decoders, {})
        for traffic in read.versions.values():
            traffic.flush(decoders.examples, force=True)
    except window_lib.NeedsInference as exc:
        yield pvalue.TaggedOutput(RESULTS, (NEEDS_INFERENCE, str(exc)))
        return
    for key, traffic in read.versions.items():
        for batch in traffic.stats.batches:
            yield with_slice(batch, slice_value(key))
        if traffic.predictions:
            outputs = checks.columns_batch({checks.PREDICTION: traffic.served_outputs()})
            yield pvalue.TaggedOutput(OUTPUTS, with_slice(outputs, slice_value(key)))
        counted = dataclasses.replace(traffic.counted(), predictions=[],     # their statistics: OUTPUTS
                                      sample=RowSample(capacity=0))           # its rows: SAMPLES
        yield pvalue.TaggedOutput(RESULTS, (VERSION, key, counted, traffic.stats.rows, index))
        yield pvalue.TaggedOutput(SAMPLES, (key, traffic.sample))
    for unreadable in read.unreadable:
        yield pvalue.TaggedOutput(RESULTS, (UNREADABLE, unreadable))
    for name, result in read.file_results.items():
        yield pvalue.TaggedOutput(RESULTS, (FILE, name, result))
    if read.unattributed.rejected:
        yield pvalue.TaggedOutput(RESULTS, (UNATTRIBUTED, read.unattributed))
    if join and decoded.chunks:
        for chunk in decoded.chunks:
            key = (chunk.model_name, chunk.version)
            for i, serialized in enumerate(chunk.serialized):
                row, score = int(chunk.row_in_request[i]), float(chunk.predictions[i])
                yield pvalue.TaggedOutput(ANSWERED, (chunk.request_ids[i],
                                                     (row, key, serialized, score, (index, i))))


def _labelled(joined) -> Iterator:
    """(request id, {"rows": answered rows, "labels": (row, tips)}) -> the labelled rows."""
    _, groups = joined
    labels = dict(groups["labels"])
    if not labels:
        return
    for row, key, serialized, score, order in groups["rows"]:
        tips = labels.get(row)
        if tips is not None:
            yield LABELLED, key, order, (serialized, score, tips)


def _write_sliced_statistics(batches, path: str, name: str) -> None:
    """TFDV's statistics of ``batches`` per ``SLICE_COLUMN`` value, written to ``path``."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.utils import slicing_util
    from tensorflow_metadata.proto.v0 import statistics_pb2

    options = tfdv.StatsOptions(
        experimental_slice_functions=[slicing_util.get_feature_value_slicer({SLICE_COLUMN: None})])
    _ = (batches
         | f"{name}Statistics" >> tfdv.GenerateStatistics(options)
         | f"Write{name}Statistics" >> beam.io.WriteToTFRecord(
             path, shard_name_template="", coder=beam.coders.ProtoCoder(statistics_pb2.DatasetFeatureStatisticsList)))


class ReadPart(beam.DoFn):
    """The per-file reader: (index, part) -> its batches and tagged results; the
    decoders built once per worker."""

    def __init__(self, schema, rows_schema, join: bool, slicing: Optional[bias_lib.SliceSpec] = None):
        super().__init__()
        self.schema, self.rows_schema, self.join, self.slicing = schema, rows_schema, join, slicing
        self.decoders = None

    def setup(self):
        self.decoders = traffic_lib.Decoders.of(self.schema, self.rows_schema)

    def process(self, indexed_part):
        yield from _read_part(*indexed_part, self.decoders, self.join, self.slicing)


@dataclasses.dataclass
class JobOutput:
    """What a job wrote: the sliced statistics of the rows and of the served outputs,
    and the pickled results."""
    statistics: object                # DatasetFeatureStatisticsList, one dataset per slice
    outputs: object                   # the same of the served outputs
    results: List[tuple]

    @property
    def needs_inference(self) -> Optional[str]:
        return next((r[1] for r in self.results if r[0] == NEEDS_INFERENCE), None)


def _run_job(beam_args: List[str], parts: List[window_lib.Part], feedback: traffic_lib.Feedback,
             schema, rows_schema, out: str, slicing: Optional[bias_lib.SliceSpec] = None) -> None:
    """The job, writing ``<out>/statistics`` and ``<out>/results``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    join = bool(feedback)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        read = (pipeline
                | "Parts" >> beam.Create(list(enumerate(parts)))
                | "Spread" >> beam.Reshuffle()
                | "ReadPart" >> beam.ParDo(ReadPart(schema, rows_schema, join, slicing)).with_outputs(
                    RESULTS, OUTPUTS, ANSWERED, SAMPLES, main="batches"))
        _write_sliced_statistics(read.batches, FileSystems.join(out, "statistics"), "Rows")
        _write_sliced_statistics(read[OUTPUTS], FileSystems.join(out, "outputs"), "Outputs")
        results = [read[RESULTS], read[SAMPLES] | "CombineSamples" >> beam.CombinePerKey(RowSample.merged)
                   | "Samples" >> beam.MapTuple(lambda key, sample: (SAMPLE, key, sample))]
        if join:
            labels = pipeline | "Labels" >> beam.Create(
                [(rid, (row, tips)) for (rid, row), tips in feedback.items()])
            results.append({"rows": read[ANSWERED], "labels": labels}
                           | "JoinFeedback" >> beam.CoGroupByKey()
                           | "Labelled" >> beam.FlatMap(_labelled))
        _ = (results | "AllResults" >> beam.Flatten()
             | "WriteResults" >> beam.io.WriteToTFRecord(FileSystems.join(out, "results"), shard_name_template="",
                                                         coder=beam.coders.PickleCoder()))


def _records(pattern: str) -> Iterator[bytes]:
    """The records of the TFRecord files matching ``pattern`` (any file system Beam reaches)."""
    from core.request_log import CLEAN, scan_frames

    (matched,) = FileSystems.match([pattern])
    for path in sorted(m.path for m in matched.metadata_list):
        with FileSystems.open(path) as handle:
            frames = scan_frames(handle.read())
        if frames.tail != CLEAN:
            raise traffic_lib.EngineError(f"the Beam job's output {path} is cut short: {frames.detail}")
        yield from frames.records


def _job_output(out: str) -> JobOutput:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    statistics, outputs = statistics_pb2.DatasetFeatureStatisticsList(), statistics_pb2.DatasetFeatureStatisticsList()
    for record in _records(FileSystems.join(out, "statistics*")):
        statistics.MergeFromString(record)
    for record in _records(FileSystems.join(out, "outputs*")):
        outputs.MergeFromString(record)
    return JobOutput(statistics, outputs, [pickle.loads(r) for r in _records(FileSystems.join(out, "results*"))])


def _remove(directory: str) -> None:
    if FileSystems.exists(directory):
        FileSystems.delete([directory])


def version_statistics(statistics, key: Key, empty):
    """The statistics of one (model, version) slice as the local engine gives them:
    one unnamed dataset, without the slice column; ``empty`` when no row of the
    version reached them."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    name = f"{SLICE_COLUMN}_{slice_value(key)}"
    found = next((d for d in statistics.datasets if d.name == name), None)
    if found is None:
        return empty
    dataset = statistics_pb2.DatasetFeatureStatistics()
    dataset.CopyFrom(found)
    dataset.name = ""
    kept = [f for f in dataset.features if list(f.path.step) != [SLICE_COLUMN]]
    del dataset.features[:]
    dataset.features.extend(kept)
    return statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])


def assemble(output: JobOutput) -> traffic_lib.WindowTraffic:
    """The job's output as the local engine's ``WindowTraffic``: counts merged in the
    window's file order, labelled rows in read order."""
    read = traffic_lib.WindowTraffic()
    rows_in_statistics: Dict[Key, int] = {}
    labelled: Dict[Key, list] = {}
    for item in sorted((r for r in output.results if r[0] == VERSION), key=lambda r: r[4]):
        _, key, counted, rows, _ = item
        read.of(*key).merge(counted)
        rows_in_statistics[key] = rows_in_statistics.get(key, 0) + rows
    for item in output.results:
        if item[0] == FILE:
            read.file_results[item[1]] = item[2]
        elif item[0] == UNREADABLE:
            read.unreadable.append(item[1])
        elif item[0] == UNATTRIBUTED:
            read.unattributed.merge(item[1])
        elif item[0] == LABELLED:
            labelled.setdefault(item[1], []).append((item[2], item[3]))
        elif item[0] == SAMPLE:
            read.of(*item[1]).sample.merge(item[2])
    no_rows = checks.StatsAccumulator().result()
    no_outputs = checks.statistics_of({checks.PREDICTION: np.zeros(0, np.float32)})
    for key, traffic in read.versions.items():
        traffic.stats = ComputedStatistics(version_statistics(output.statistics, key, no_rows),
                                           rows_in_statistics[key])
        traffic.output_stats = version_statistics(output.outputs, key, no_outputs)
        traffic.labelled = [row for _, row in sorted(labelled.get(key, []), key=lambda x: x[0])]
    read.unreadable.sort(key=lambda u: u.file)
    read.file_results = dict(sorted(read.file_results.items()))
    return read


@dataclasses.dataclass
class BeamEngine:
    """``engine.TrafficEngine`` as a Beam job run with ``beam_args``. The job writes its
    output under ``--temp_location`` when ``beam_args`` give one (a runner whose
    workers do not share this machine's disk: e.g. ``gs://...`` for Dataflow), else
    under ``work_dir``; removed once read."""
    beam_args: List[str]
    work_dir: str
    # the runner's own arguments, for as long as its services run (``engine.portable_runner``)
    runner: Optional[Callable[[], ContextManager[List[str]]]] = None
    slicing: Optional[bias_lib.SliceSpec] = None     # the sensitive slices each version tallies

    def output_dir(self, window_id: str) -> str:
        from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

        temp = PipelineOptions(self.beam_args).view_as(GoogleCloudOptions).temp_location
        return FileSystems.join(temp or self.work_dir, "tfxops-monitor", window_id or "window")

    def read_window(self, win: window_lib.Window, feedback: traffic_lib.Feedback,
                    schema) -> traffic_lib.WindowTraffic:
        out = self.output_dir(win.id)
        output = self._run(win, feedback, schema, schema, out)
        reason = output.needs_inference
        if reason is not None and schema is not None:
            log.info("decoding with inferred types: %s", reason)
            output = self._run(win, feedback, None, schema, out)
        _remove(out)
        return assemble(output)

    def _run(self, win: window_lib.Window, feedback: traffic_lib.Feedback, schema, rows_schema,
             out: str) -> JobOutput:
        _remove(out)
        FileSystems.mkdirs(out)
        try:
            with (self.runner() if self.runner else contextlib.nullcontext([])) as runner_args:
                _run_job(runner_args + self.beam_args, win.parts, feedback, schema, rows_schema, out, self.slicing)
        except traffic_lib.EngineError:
            raise
        except Exception:  # noqa: BLE001 - any runner's failure: logged whole, reported briefly
            log.exception("the Beam job of window %s failed", win.id)
            raise traffic_lib.EngineError(
                f"the beam engine could not read window {win.id} with beam_args {self.beam_args or '(none)'}: "
                f"the runner's error is logged above; the window stays open for the next pass: fix the runner "
                f"(beam_args), or run with monitor_engine=local") from None
        return _job_output(out)
