"""Run the pipeline with LocalDagRunner: progress a person can follow, library logs
in a file, and a summary read back from ML Metadata.

The progress lines come from TFX's own log records (LocalDagRunner's "Component X
is running/finished", the launcher's "cached execution" / "new execution"), so
they say what the orchestrator did, not what we expected it to do.

Before the pipeline starts, ``pipeline.recovery.recover`` deals with what a killed
push left behind. While it runs, the run's ``pipeline_run`` context in MLMD names
its owner (pid, host, process start time: ``core.owner``) and, once it is over,
that it ended; a run whose owner is gone before that is "abandoned" in
``tfxops lineage runs``. MLMD's own execution states are left as TFX writes them
(a killed node's execution stays RUNNING, as TFX's LocalDagRunner leaves it).

LocalDagRunner orchestrates; the Beam components (ExampleGen, StatisticsGen,
Transform, Evaluator) run on the Beam runner ``beam_runner`` names: ``local``
(``beam_args`` as they are: DirectRunner by default) or ``portable`` (Beam's
PortableRunner with a job service and an EXTERNAL worker pool, ``pipeline.portable``).
``beam_arguments`` is the one place that maps the one to the other.
"""
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, TextIO

from pipeline import portable, preflight, run_audit, warmup
from core import mlmd, storage
from core.config import Settings, require_local
from core.env import library_output_to
from core.owner import RUN_ENDED, RUN_OWNER, Owner
from tracking.mirror import log_pipeline_run


class PipelineFailed(RuntimeError):
    def __init__(self, node_id: str, message: str):
        super().__init__(f"{node_id}: {message}")
        self.node_id = node_id
        self.message = message


@dataclasses.dataclass
class NodeReport:
    node_id: str
    state: str            # executed | cached | skipped | failed
    seconds: float


@dataclasses.dataclass
class RunSummary:
    run_id: str
    ok: bool
    wall_seconds: float
    nodes: List[NodeReport]
    blessed: Optional[bool] = None
    blessing_reasons: List[str] = dataclasses.field(default_factory=list)
    metrics: List[Dict] = dataclasses.field(default_factory=list)
    # the fairness gate (pipeline.fairness): its settings as the Evaluator applied them, every
    # slice of the sensitive features (core.evaluation.SliceMetrics) and the gate's failures
    fairness_gate: Dict = dataclasses.field(default_factory=dict)
    fairness: List[Dict] = dataclasses.field(default_factory=list)
    fairness_failures: List[Dict] = dataclasses.field(default_factory=list)
    # the trusted holdout (pipeline.holdout): its gate's settings and verdict (passed, AUCs, examples, reason)
    holdout: Dict = dataclasses.field(default_factory=dict)
    not_pushed_reason: Optional[str] = None     # the Pusher's reason for not pushing, when it gave one
    pushed: bool = False                        # a new version was pushed by this run
    pushed_version: Optional[str] = None
    pushed_path: Optional[str] = None
    cached_push_version: Optional[str] = None   # cached Pusher: the version holding this model
    serving_version: Optional[str] = None       # the newest version in the push directory
    recovery: Dict = dataclasses.field(default_factory=dict)   # pipeline.recovery's report
    failed_node: Optional[str] = None
    error: Optional[str] = None
    metadata_path: str = ""
    log_path: str = ""
    pipeline_root: str = ""
    audit_error: Optional[str] = None           # the audit trail could not be written (core.audit)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# ----------------------------------------------------------------------- progress
class _Progress:
    """One line per component as LocalDagRunner starts and ends it."""

    def __init__(self, out: TextIO, total: int):
        self.out, self.total = out, total
        self.nodes: List[NodeReport] = []
        self.current: Optional[str] = None
        self._started = 0.0

    def start(self, node: str) -> None:
        self.current, self._started = node, time.monotonic()
        if self._interactive():   # overwritten in place when the node ends
            self.out.write(f"[{len(self.nodes) + 1:2d}/{self.total}] {node:<32} running ...")
            self.out.flush()

    def finish(self, node: str, state: str) -> None:
        seconds = time.monotonic() - self._started
        self.nodes.append(NodeReport(node, state, round(seconds, 2)))
        line = f"[{len(self.nodes):2d}/{self.total}] {node:<32} {state:<8} {seconds:6.1f} s"
        self.out.write(("\r\033[K" if self._interactive() else "") + line + "\n")
        self.out.flush()
        self.current = None

    def _interactive(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())


class _RunRecord:
    """The run's owner and end, as custom properties of its pipeline_run context.

    The owner is written when the first node has registered the context. TFX
    writes the contexts it read back with each execution it publishes, so the
    owner goes into those very context objects too (else the first node's
    publication would erase it).
    """

    def __init__(self):
        self.context_id: Optional[int] = None

    def prepared(self, handle, result) -> None:
        """After a launcher's ``_prepare_execution``: the owner, once; and the
        execution's association with its cache context, now rather than at
        publication, so that an execution completed later by pipeline.recovery
        is found by the next run's cache lookup."""
        from ml_metadata.proto import metadata_store_pb2
        from tfx.orchestration.portable.mlmd.context_lib import CONTEXT_TYPE_EXECUTION_CACHE

        store = handle.store
        kinds = {t.id: t.name for t in store.get_context_types()}
        for context in result.contexts:
            kind = kinds.get(context.type_id)
            if kind == mlmd.RUN_CONTEXT and RUN_OWNER not in context.custom_properties:
                context.custom_properties[RUN_OWNER].string_value = json.dumps(Owner.current().as_dict())
                store.put_contexts([context])
                self.context_id = context.id
            elif kind == CONTEXT_TYPE_EXECUTION_CACHE and result.is_execution_needed:
                store.put_attributions_and_associations([], [metadata_store_pb2.Association(
                    execution_id=result.execution_info.execution_id, context_id=context.id)])

    def ended(self, settings: Settings, outcome: str) -> None:
        if self.context_id is None:
            return
        try:
            store = mlmd.open_store(settings, readonly=False)
            [context] = mlmd.with_retry(lambda: store.get_contexts_by_id([self.context_id]))
            when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            context.custom_properties[RUN_ENDED].string_value = f"{outcome} at {when}"
            mlmd.with_retry(lambda: store.put_contexts([context]))
        except Exception:  # noqa: BLE001 - the run's result stands; lineage will say "abandoned"
            logging.exception("could not record the end of the run in MLMD")


@contextlib.contextmanager
def _reporting_launcher(progress: _Progress, record: _RunRecord):
    """Make LocalDagRunner's launcher report each node's start, end and whether the
    launcher used a cached execution (what MLMD records as CACHED), and keep the
    run's record (``_RunRecord``)."""
    from tfx.orchestration.portable import launcher as launcher_module

    original = launcher_module.Launcher

    class ReportingLauncher(original):
        def _prepare_execution(self):
            result = super()._prepare_execution()
            with self._mlmd_connection as handle:
                record.prepared(handle, result)
            self._tfxops_state = "executed" if result.is_execution_needed else (
                "cached" if result.execution_info and result.execution_info.execution_id else "skipped")
            return result

        def launch(self):
            node = self._pipeline_node.node_info.id
            progress.start(node)
            self._tfxops_state = "executed"
            try:
                info = super().launch()
            except BaseException:
                progress.finish(node, "failed")
                raise
            progress.finish(node, self._tfxops_state if info is not None else "skipped")
            return info

    launcher_module.Launcher = ReportingLauncher
    try:
        yield
    finally:
        launcher_module.Launcher = original


# ------------------------------------------------------------------------ summary
def summarize(settings: Settings, progress_nodes: List[NodeReport], wall: float,
              error: Optional[PipelineFailed], log_path: Path, started_ms: int) -> RunSummary:
    """The run's summary from its record in MLMD: the newest run, if its context was
    created at or after ``started_ms`` (epoch milliseconds, when this run started);
    else this run recorded nothing (it failed before its first node) and the summary
    takes nothing from an earlier run."""
    summary = RunSummary(run_id="-", ok=error is None, wall_seconds=round(wall, 1),
                         nodes=progress_nodes, metadata_path=str(settings.metadata_file),
                         log_path=str(log_path), pipeline_root=str(settings.pipeline_root_path))
    if error is not None:
        summary.failed_node, summary.error = error.node_id, error.message
    try:
        store = mlmd.open_store(settings)
        run = mlmd.find_run(store, settings.pipeline_name)
    except mlmd.MetadataError:   # the run failed before it recorded anything
        return summary
    if run.create_time_since_epoch < started_ms:     # an earlier run's: this one recorded nothing
        return summary
    summary.run_id = run.name
    executions = {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name)}
    evaluator = executions.get("Evaluator")
    if evaluator and evaluator.outputs.get("blessing"):
        blessing = evaluator.outputs["blessing"][0]
        summary.blessed = bool(mlmd.custom(blessing, "blessed", 0))
        metrics, reasons = mlmd.evaluation_details(evaluator.outputs["evaluation"][0].uri)
        # the thresholds the Evaluator actually applied (its recorded eval_config)
        config = mlmd.properties(evaluator.execution).get("eval_config")
        thresholds = mlmd.eval_config_thresholds(json.loads(config) if isinstance(config, str) else config)
        for metric in metrics:
            metric["threshold"] = thresholds.get(metric["metric"], "")
        summary.metrics = metrics
        summary.blessing_reasons = reasons if not summary.blessed else []
        _fairness_results(summary, evaluator)
    from pipeline.holdout import recorded_result

    summary.holdout = recorded_result(executions)
    _push_outcome(summary, executions.get("Pusher"), settings)
    return summary


def _fairness_results(summary: RunSummary, evaluator: mlmd.NodeExecution) -> None:
    """The fairness gate's settings (the Evaluator's ``fairness_gate`` property), the
    sensitive features' slices and the gate's failures."""
    from core import evaluation
    from pipeline.fairness import FairnessGate

    gate = FairnessGate.of_evaluator(evaluator.execution)
    if gate is None:
        return
    summary.fairness_gate = dataclasses.asdict(gate)
    uri = evaluator.outputs["evaluation"][0].uri
    slices = evaluation.slice_metrics(uri, summary.fairness_gate["features"],
                                      summary.fairness_gate["min_examples_per_class"])
    summary.fairness = [s.as_dict() for s in slices if s.feature]
    summary.fairness_failures = [f.as_dict() for f in evaluation.fairness_failures(uri)]


def _push_outcome(summary: RunSummary, pusher: Optional[mlmd.NodeExecution], settings: Settings) -> None:
    """Pushed (a new version), or cached: the Pusher's output is then the earlier
    push of the same model, which this run did not make; or not pushed because the
    model is already the newest version's (``cached_push_version`` names it too)."""
    from core.pushdir import newest_version

    newest = newest_version(str(settings.model_push_dir))
    summary.serving_version = str(newest) if newest is not None else None
    if not (pusher and pusher.outputs.get("pushed_model")):
        return
    pushed = pusher.outputs["pushed_model"][0]
    if not int(mlmd.custom(pushed, "pushed", 0) or 0):
        from pipeline.pusher import ALREADY_PUSHED_KEY, NOT_PUSHED_REASON_KEY    # e.g. the model already pushed

        already = mlmd.custom(pushed, ALREADY_PUSHED_KEY)
        summary.not_pushed_reason = mlmd.custom(pushed, NOT_PUSHED_REASON_KEY)
        summary.cached_push_version = None if already is None else str(already)
        return
    if pusher.state == "CACHED":
        summary.cached_push_version = str(mlmd.custom(pushed, "pushed_version"))
        return
    summary.pushed = True
    summary.pushed_version = str(mlmd.custom(pushed, "pushed_version"))
    summary.pushed_path = mlmd.custom(pushed, "pushed_destination")


def render(summary: RunSummary) -> str:
    lines = ["", f"Run {summary.run_id}: {'succeeded' if summary.ok else 'FAILED'} "
                 f"in {summary.wall_seconds:.1f} s"]
    ran = [n for n in summary.nodes if n.state != "skipped"]
    if ran and all(n.state == "cached" for n in ran if n.node_id != "baseline_model_resolver"):
        lines.append("  every component was cached (unchanged data, code and settings)")
    if not summary.ok:
        lines.append(f"  stopped at {summary.failed_node}: {summary.error}")
    if summary.metrics:
        lines.append("  evaluation, overall slice:   candidate    baseline   threshold")
        for metric in summary.metrics:
            lines.append(f"    {metric['metric']:<24} {_number(metric['value']):>10} "
                         f"{_number(metric['baseline']):>11}   {metric['threshold']}")
    lines += render_fairness(summary)
    lines += render_holdout(summary.holdout)
    if summary.blessed is not None:
        lines.append(f"  blessed: {'yes' if summary.blessed else 'no'}")
        for reason in summary.blessing_reasons:
            lines.append(f"    - {reason}")
    if summary.pushed:
        lines.append(f"  pushed: version {summary.pushed_version} -> {summary.pushed_path}")
    elif summary.cached_push_version:
        lines.append(f"  pushed: {_nothing_new(summary)}")
    elif summary.not_pushed_reason:
        lines.append(f"  pushed: nothing ({summary.not_pushed_reason})")
    elif summary.ok:
        lines.append("  pushed: nothing (the model was not blessed)")
    else:
        lines.append("  pushed: nothing (served models are unchanged)")
    lines.append(f"  metadata (MLMD): {summary.metadata_path}")
    lines.append(f"  pipeline root:   {summary.pipeline_root}")
    lines.append(f"  full log:        {summary.log_path}")
    if summary.audit_error:
        lines.append(f"  AUDIT TRAIL NOT WRITTEN: {summary.audit_error}")
    return "\n".join(lines)


def render_fairness(summary: RunSummary) -> List[str]:
    """Per sensitive feature, its slices' metrics and whether the gate judged them;
    then the gate's verdict (its failures are among the blessing's reasons, which
    name the slice, the metric and the bound)."""
    gate = summary.fairness_gate
    if not gate:
        return []
    lines = [f"  fairness gate (slices with >= {gate['min_examples_per_class']} examples of each label; "
             f"rates at a score above {gate['decision_threshold']:g}): AUC >= {gate['min_slice_auc']:g}, "
             f"FPR gap <= {gate['max_fpr_gap']:g}, FNR gap <= {gate['max_fnr_gap']:g}"]
    for feature in gate["features"]:
        lines.append(f"    {feature:<24} {'examples':>8} {'pos':>6} {'AUC':>7} {'acc':>7} {'FPR':>7} "
                     f"{'FNR':>7} {'pos.rate':>8}")
        rows = [r for r in summary.fairness if r["feature"] == feature]
        shown = [r for r in rows if r["gated"]] + [r for r in rows if not r["gated"]][:SMALL_SLICES_SHOWN]
        for row in sorted(shown, key=rows.index):
            lines.append(f"      {row['value'][:22]:<22} {row['example_count']:>8} {row['positives']:>6} "
                         + " ".join(f"{_rate(row[key]):>7}" for key in
                                    ("auc", "accuracy", "false_positive_rate", "false_negative_rate"))
                         + f" {_rate(row['positive_rate']):>8}   {'gated' if row['gated'] else 'not gated'}")
        if len(rows) > len(shown):
            rest = [r for r in rows if r not in shown]
            lines.append(f"      ... {len(rest)} more slices, {sum(r['example_count'] for r in rest)} "
                         f"examples, not gated (all in --json)")
    failures = len(summary.fairness_failures)
    lines.append("  fairness: passed" if not failures else
                 f"  fairness: FAILED ({failures} {'failure' if failures == 1 else 'failures'}, under 'blessed: no')")
    return lines


def render_holdout(holdout: Dict) -> List[str]:
    """The trusted holdout's verdict (``pipeline.holdout``): the candidate's AUC against
    the served model's and the bound, or why it was refused."""
    if not holdout:
        return []
    where = f"  trusted holdout ({holdout['holdout_dir']}, eval split, {holdout['examples']} examples): "
    if not holdout["passed"]:
        return [where + "REFUSED: " + holdout["reason"].removeprefix("trusted holdout: ")]
    served = holdout["baseline_auc"]
    return [where + f"passed: AUC {_number(holdout['auc'])} " + (
        f"vs served {_number(served)} (drop at most {holdout['max_auc_drop']:g})" if served is not None
        else f">= min_auc {holdout['min_auc']:g} (no served model)")]


SMALL_SLICES_SHOWN = 5    # slices not gated shown per feature in the text summary (all in --json)


def _rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _nothing_new(summary: RunSummary) -> str:
    version, serving = summary.cached_push_version, summary.serving_version
    if serving == version:
        return f"nothing new (version {version} already serving)"
    return f"nothing new (this model was pushed as version {version}; serving now: {serving or 'nothing'})"


# ---------------------------------------------------------------------------- run
def run_pipeline(settings: Settings, out: TextIO = None, data_dir: Optional[str] = None) -> RunSummary:
    """Pre-flight checks, recovery of a killed push, then the whole pipeline;
    returns the summary. Progress goes to ``out`` (default stdout).

    Raises ``preflight.PreflightError`` before anything is written when the
    input is unusable.
    """
    data_dir = data_dir or settings.data_dir
    preflight.check_data_dir(data_dir, settings.preflight_rows)
    out = out or sys.stdout
    started_ms = int(time.time() * 1000)      # MLMD's clock: a context created by this run is not older
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = require_local("log_dir", settings.logs_path, "the run log is a local file") / f"run-{stamp}.log"
    _check_metadata_store(settings)
    audit_writes = [run_audit.started(settings, data_dir)]
    storage.makedirs(settings.pipeline_root_path)
    if not storage.is_uri(settings.metadata_file):
        settings.metadata_file.parent.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    with library_output_to(log_path) as console:
        # TensorFlow is imported here, so its start-up noise goes to the log too.
        from pipeline.pipeline import NODE_ORDER
        from core.env import skip_autograph_for_libraries

        skip_autograph_for_libraries()
        progress = _Progress(console(out), len(NODE_ORDER))
        recovered, error = {}, None
        try:
            with _beam_for_run(settings, log_path):
                recovered = _recover(settings, progress.out)
                error = _run_on_local_dag_runner(settings, data_dir, progress)
        except portable.ServiceFailed as exc:
            error = PipelineFailed(BEAM_SERVICES, str(exc))
        summary = summarize(settings, progress.nodes, time.monotonic() - start, error, log_path, started_ms)
        summary.recovery = recovered
    summary.audit_error = run_audit.failures(audit_writes + run_audit.outcome(settings, summary))
    summary_path = log_path.with_suffix(".json")
    summary_path.write_text(summary.to_json())
    log_pipeline_run(settings, summary)      # the MLflow mirror (issue 18; tracking/): never fails the run
    return summary


def _check_metadata_store(settings: Settings) -> None:
    """SQLite opens a file on a local disk: a URI ``metadata_path`` (e.g. under a
    gs:// home) is a ``ConfigError`` before anything is written."""
    if mlmd.connection_config(settings).HasField("sqlite"):
        require_local("metadata_path", settings.metadata_file,
                      "the SQLite metadata store is a file on a local disk (a store shared by machines "
                      "is MySQL: metadata_backend=mysql)")


def _recover(settings: Settings, out: TextIO) -> Dict:
    """pipeline.recovery before the run; its findings on ``out``. A failure is
    reported and the run goes on (recovery is retried by the next run)."""
    from pipeline import recovery

    try:
        report = recovery.recover(settings)
    except Exception as exc:  # noqa: BLE001 - e.g. permissions on the push directory
        logging.exception("recovery of the push directory failed")
        out.write(f"recovery: failed ({_innermost_message(exc)}); the run goes on, the next run retries\n")
        return {"error": _innermost_message(exc)}
    for line in report.lines():
        out.write(f"recovery: {line}\n")
    return report.as_dict()


# ----------------------------------------------------------------- Beam runners
BEAM_SERVICES = "Beam services"          # the failed "node" when they did not start


# Where this run's services listen: in the launcher's environment while it runs, read
# by TFX when a component starts (not in the cache key, unlike the arguments' text).
JOB_ENDPOINT_VARIABLE = "TFXOPS_PORTABLE_JOB_ENDPOINT"
WORKER_POOL_VARIABLE = "TFXOPS_PORTABLE_WORKER_POOL"


def beam_arguments(settings: Settings) -> List:
    """The one place ``beam_runner`` becomes Beam's arguments (``create_pipeline``'s
    ``beam_pipeline_args``).

    local: ``beam_args`` as they are (empty: DirectRunner in memory). portable:
    ``portable.runner_arguments`` then ``beam_args``, which win as later flags: e.g.
    ``--environment_type=DOCKER --environment_config=IMAGE`` for a cluster that
    starts the containers itself. The two addresses are placeholders of the
    environment variables ``_beam_for_run`` sets: TFX's cache key holds the
    arguments' text, so a rerun through other ports is still fully cached.
    """
    if settings.beam_runner == "local":
        return list(settings.beam_args)
    from tfx.dsl.placeholder.placeholder import environment_variable

    return [*portable.runner_arguments(environment_variable(JOB_ENDPOINT_VARIABLE),
                                       environment_variable(WORKER_POOL_VARIABLE),
                                       settings.beam_worker_image),
            *settings.beam_args]


@contextlib.contextmanager
def _beam_for_run(settings: Settings, log_path: Path) -> Iterator[None]:
    """For ``portable``, the job service and worker pool (``pipeline.portable``),
    started or checked for the block and their addresses in the environment
    ``beam_arguments`` reads; nothing for ``local``."""
    if settings.beam_runner == "local":
        yield
        return
    with portable.services(settings, log_path.with_suffix("")) as endpoints:
        saved = {name: os.environ.get(name) for name in (JOB_ENDPOINT_VARIABLE, WORKER_POOL_VARIABLE)}
        os.environ[JOB_ENDPOINT_VARIABLE] = endpoints.job_endpoint
        os.environ[WORKER_POOL_VARIABLE] = endpoints.worker_pool
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def fairness_gate(settings: Settings):
    """The settings of ``pipeline.fairness.FairnessGate``."""
    from pipeline.fairness import FairnessGate

    return FairnessGate.from_settings(settings)


def holdout_gate(settings: Settings):
    """The settings of ``pipeline.holdout.HoldoutGate``."""
    from pipeline.holdout import holdout_gate as gate

    return gate(settings)


def trusted_holdout_dir(settings: Settings) -> str:
    """The trusted holdout's directory (``pipeline.holdout``)."""
    from pipeline.holdout import trusted_holdout_dir as holdout_dir

    return holdout_dir(settings)


def pipeline_arguments(settings: Settings, data_dir: str) -> Dict:
    """The settings as ``pipeline.pipeline.create_pipeline``'s arguments, the pipeline
    reading the CSVs in ``data_dir``."""
    from pipeline.model_card import card_config

    return dict(
        pipeline_name=settings.pipeline_name,
        pipeline_root=str(settings.pipeline_root_path),
        data_root=data_dir,
        schema_path=settings.schema_path,
        preprocessing_fn=settings.preprocessing_fn,
        run_fn=settings.run_fn,
        train_steps=settings.train_steps,
        eval_steps=settings.eval_steps,
        hyperparameters=settings.hparams,
        gate_severities=list(settings.gate_severities),
        min_auc=settings.min_auc,
        min_binary_accuracy=settings.min_binary_accuracy,
        max_auc_drop=settings.max_auc_drop,
        slice_features=list(settings.slice_features),
        fairness=fairness_gate(settings),
        trusted_holdout_dir=trusted_holdout_dir(settings),
        holdout=holdout_gate(settings),
        serving_model_dir=str(settings.model_push_dir),
        attribution=dict(rows=settings.attribution_rows, background_rows=settings.attribution_background_rows,
                         samples=settings.attribution_samples, seed=settings.seed),
        model_card=card_config(settings),
        model_integrity_key_env=settings.model_integrity_key_env,
        out_of_domain_range_margin=settings.out_of_domain_range_margin,
        warmup_examples=settings.warmup_examples,        # warm-up and infra validation (issue 17 part 2)
        infra_validation=settings.infra_validation,
        infra_validation_timeout_seconds=settings.infra_validation_timeout_seconds,
        warmup_redacted_features=warmup.redacted_names(settings),     # the request logs' redaction (core.redact)
        metadata_connection_config=mlmd.connection_config(settings),
        beam_pipeline_args=beam_arguments(settings),
        enable_cache=settings.enable_cache)


def _run_on_local_dag_runner(settings: Settings, data_dir: str,
                             progress: _Progress) -> Optional[PipelineFailed]:
    """LocalDagRunner over the pipeline, recorded as a run with an owner and an end."""
    from tfx import v1 as tfx
    from pipeline.pipeline import create_pipeline

    record = _RunRecord()
    try:
        with _reporting_launcher(progress, record):
            tfx.orchestration.LocalDagRunner().run(
                create_pipeline(**pipeline_arguments(settings, data_dir)))
    except Exception as exc:  # the failing component's own exception
        node = progress.nodes[-1].node_id if progress.nodes else "pipeline"
        logging.exception("pipeline failed at %s", node)
        record.ended(settings, f"failed at {node}")
        return PipelineFailed(node, _innermost_message(exc))
    record.ended(settings, "succeeded")
    return None


def _innermost_message(exc: BaseException) -> str:
    """The innermost useful message of a (possibly chained) exception."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    if callable(getattr(seen, "code", None)) and callable(getattr(seen, "details", None)):   # grpc.RpcError
        return f"a Beam service call failed: {seen.code().name}: {seen.details()}"
    return str(seen) or type(seen).__name__
