"""One monitor pass (``tfxops monitor``), as its steps:

1. window    which request-log parts are new (``monitoring.window``), read per
             served model version (``monitoring.traffic``);
2. analysis  each version against its baseline from MLMD (``monitoring.analysis``);
3. decision  the trigger policy (``monitoring.policy``);
4. action    a retrain or a re-push (``monitoring.act``), entered in the
             checkpoint before it starts;
5. record    one ``tfxops.Monitor`` execution per version in MLMD (``monitoring.record``);
6. report    ``<monitor_dir>/reports/<window>.json`` and ``.html`` (``monitoring.report``);
7. commit    the checkpoint: the window's files are analysed, its statistics are
             the next window's drift baseline (a dry run commits nothing).

The pass runs under the monitor lock and opens the metadata store once.
"""
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from core import mlmd, pushdir, served as served_lib
from core.config import Settings, require_local
from core.redact import redacted_features
from monitoring import act, analysis as analysis_lib, baseline as baseline_lib, engine as engine_lib, lock as lock_lib
from monitoring import agreement, attribution_drift, logfiles, out_of_domain, probing, redacted
from monitoring import policy, record, rejections as rejections_lib, report, report_verdict, reuse, window as window_lib
from monitoring.result import (ANALYSED, INCOMPLETE, NO_NEW_REQUESTS, MonitorResult, NotJudged, ReportPaths,
                               VersionResult)
from monitoring.traffic import FEEDBACK_NEEDS_LOCAL, EngineError, VersionTraffic, WindowTraffic, load_feedback
from tracking.mirror import log_monitor_window

log = logging.getLogger("tfxops.monitoring")
PrintLine = Callable[[str], None]


class MonitorError(RuntimeError):
    """A pass that cannot complete (the window stays open for the next one)."""


@dataclasses.dataclass
class MonitorPass:
    """What the steps of one pass share."""
    settings: Settings
    dry_run: bool
    print_line: PrintLine
    checkpoint: window_lib.Checkpoint
    window: window_lib.Window
    started: float
    store: object = None          # the metadata store, opened once, read-write (the pass records into it)
    acted: bool = False           # a version of this window was acted on

    @property
    def monitor_dir(self) -> Path:
        return self.settings.monitor_path

    def version_dir(self, model_name: str, version: Optional[int]) -> Path:
        """Where a version's statistics and anomalies of this window go."""
        return self.monitor_dir / "windows" / self.window.id / f"{model_name}-{version}"


def monitor_once(settings: Settings, dry_run: bool = False, out: Optional[PrintLine] = None) -> MonitorResult:
    """Analyse the next window under the monitor lock (``monitoring.lock``: one pass at
    a time per monitor directory); ``out`` gets the progress and summary lines.
    ``MonitorError`` for a request-log directory that does not exist; ``lock.LockBusy``
    when another monitor holds the lock longer than ``monitor_lock_wait_seconds``."""
    print_line = out or _silent
    require_local_dirs(settings)
    _check_log_dir(Path(settings.request_logs_path))
    with lock_lib.hold(settings.monitor_path, settings.monitor_lock_wait_seconds, print_line):
        if not dry_run:
            _recover_orphans(settings.request_logs_path, print_line)
        return _monitor_window(settings, dry_run, print_line)


def _monitor_window(settings: Settings, dry_run: bool, print_line: PrintLine) -> MonitorResult:
    checkpoint = window_lib.Checkpoint(settings.monitor_path)
    win = window_lib.open_window(checkpoint, settings.request_logs_path, settings.monitor_max_files,
                                 persist=not dry_run)
    monitor_pass = MonitorPass(settings, dry_run, print_line, checkpoint, win, time.time())
    if not win.files:
        return _no_new_requests(monitor_pass)
    print_line(f"window {win.id}: {len(win.files)} log file(s){' (resuming a crashed run)' if win.resumed else ''}")
    traffic, files = _read(monitor_pass)
    if not traffic.versions and not traffic.unattributed.rejected and not files.quarantined:
        return _nothing_complete(monitor_pass, files)
    timings = {"read_decode_statistics": time.time() - monitor_pass.started}
    mark = time.time()
    if traffic.versions:    # MetadataError (exit 2) if there is no store: never create one
        monitor_pass.store = mlmd.open_store(settings, readonly=False, must_exist=True)
    versions, not_judged = _judge_versions(monitor_pass, traffic)
    out_of_domain.judge(settings, win, versions)     # out-of-domain rates per version (issue 16 part 4)
    timings["checks_and_actions"] = time.time() - mark
    mark = time.time()
    result = _analysed(monitor_pass, traffic, files, versions, not_judged)
    result.agreement = agreement.judge(settings, win, traffic)   # production vs candidate (issue 17 part 4)
    _record(monitor_pass, result)
    timings["record_and_report"] = time.time() - mark
    result.timings = {k: round(v, 3) for k, v in timings.items()}
    report.write(result, settings)      # the page, with its policy settings, and the index
    if not dry_run:         # a dry run only reports: the next real pass analyses the same requests
        _commit(monitor_pass, traffic, files, result)
    log_monitor_window(settings, result)      # the MLflow mirror (issue 18; tracking/): never fails the pass
    print_line(result.summary_line())
    return result


# ------------------------------------------------------------------ 1. window
def _read(monitor_pass: MonitorPass) -> Tuple[WindowTraffic, logfiles.Triage]:
    """The window's traffic per version, read by the ``monitor_engine``, and its
    unreadable files sorted into incomplete (read again next pass) and quarantined
    (moved aside, never again)."""
    settings = monitor_pass.settings
    engine = engine_lib.for_settings(settings, monitor_pass.window.files)
    try:
        traffic = engine.read_window(monitor_pass.window, load_feedback(settings.feedback_path),
                                     decoding_schema(settings))
    except EngineError as exc:
        raise MonitorError(str(exc)) from None
    if not monitor_pass.dry_run:
        window_lib.fix_ends(monitor_pass.checkpoint, monitor_pass.window, traffic.ends())
    files = logfiles.triage(traffic.unreadable, settings.request_logs_path, monitor_pass.monitor_dir,
                            settings.monitor_incomplete_grace_seconds, move=not monitor_pass.dry_run)
    return traffic, files


def _no_new_requests(monitor_pass: MonitorPass) -> MonitorResult:
    if monitor_pass.window.id and not monitor_pass.dry_run:       # an open window whose files were all removed
        window_lib.commit_window(monitor_pass.checkpoint, monitor_pass.window, {})
    log_dir = monitor_pass.settings.request_logs_path
    monitor_pass.print_line(f"no new requests in {log_dir} since the last run; nothing to do")
    return MonitorResult(NO_NEW_REQUESTS, log_dir=str(log_dir))


def _nothing_complete(monitor_pass: MonitorPass, files: logfiles.Triage) -> MonitorResult:
    """Every file of the window is still being written: nothing is committed, and the
    next pass reads them again."""
    if not monitor_pass.dry_run:
        window_lib.release_window(monitor_pass.checkpoint)
    window = monitor_pass.window
    result = MonitorResult(INCOMPLETE, window=window.id, files=[p.name for p in window.files],
                           incomplete_files=files.incomplete, dry_run=monitor_pass.dry_run)
    monitor_pass.print_line(result.summary_line())
    return result


def decoding_schema(settings: Settings):
    """The schema whose types speed up decoding (a hint, never the baseline: the
    checks use the served model's schema from MLMD); None if it cannot be read."""
    try:
        import tensorflow_data_validation as tfdv
        return redacted.decoding_schema(settings, tfdv.load_schema_text(settings.schema_path))
    except Exception:  # noqa: BLE001 - decoding then infers types
        return None


# ------------------------------------------------------------------ 2-4. analysis, decision, action
def _judge_versions(monitor_pass: MonitorPass, traffic: WindowTraffic) -> Tuple[List[VersionResult], List[NotJudged]]:
    """Every version of the window with lineage in MLMD, by model name and version;
    those without are listed as not judged."""
    served = current_version(monitor_pass.settings)
    versions, not_judged = [], []
    for version_traffic in traffic.in_order():
        base = _baseline_or_none(monitor_pass.store, version_traffic, not_judged)
        if base is not None:
            current = served is None or version_traffic.version == served
            versions.append(_judge_version(monitor_pass, version_traffic, base, current))
    return versions, not_judged


def current_version(settings: Settings) -> Optional[int]:
    """The version answering requests naming no version (core.served: the stable label's,
    else the newest non-canary); the newest pushed one when the model config file is unreadable."""
    try:
        return served_lib.current_version(settings)
    except Exception:  # noqa: BLE001 - a broken config file: tfxops serve says so; judge the newest
        log.warning("model config file unreadable: the newest pushed version is taken as current", exc_info=True)
        return pushdir.newest_version(str(settings.model_push_dir))


def _baseline_or_none(store, traffic: VersionTraffic, not_judged: List[NotJudged]) -> Optional[baseline_lib.Baseline]:
    """The version's baseline; None (and the version listed as not judged) when MLMD
    has no lineage for it: the window is still analysed for the others, and committed."""
    try:
        return baseline_lib.for_version(store, traffic.version)
    except baseline_lib.NoLineageError as exc:
        log.warning("version %s not judged: %s", traffic.version, exc)
        not_judged.append(NotJudged(traffic.model_name, traffic.version, traffic.rows, traffic.all_requests,
                                    f"no lineage: not judged: {exc}"))
        return None


def _judge_version(monitor_pass: MonitorPass, traffic: VersionTraffic, base: baseline_lib.Baseline,
                   current: bool) -> VersionResult:
    """Analysis -> decision -> action for one version; its statistics saved."""
    settings, checkpoint = monitor_pass.settings, monitor_pass.checkpoint
    found = analysis_lib.analyse(settings, traffic, base, current=current, monitor_dir=monitor_pass.monitor_dir,
                                 previous_statistics=checkpoint.previous_statistics(traffic.model_name))
    attribution = redacted.attribution_not_judged(settings) or attribution_drift.judge(
        settings, monitor_pass.store, base.model.id, base.model_path, traffic.sample.rows)
    probes = probing.judge(settings, traffic.clients, found.train_stats, redacted_features(settings))
    reasons = policy.reasons_for(settings, features=found.features, prediction=found.prediction,
                                 quality=found.quality, bias=found.bias, attribution=attribution)
    candidates = []
    if policy.looks_for_reuse(settings, reasons=reasons, is_current=current):
        candidates = reuse.candidates(monitor_pass.store, base.model.id, found.stats, traffic.rows_by_signature())
    decision = policy.decide(
        settings, reasons=reasons, rows=traffic.rows, is_current=current and not monitor_pass.acted,
        window_action=checkpoint.action_for_window(monitor_pass.window.id), last_action=checkpoint.last_action(),
        dry_run=monitor_pass.dry_run, reuse=reuse.best(candidates), labelled_rows=len(found.labelled_rows),
        alert=found.alert, bias=found.bias, attribution=attribution, probing=probes)
    decision = _act(monitor_pass, traffic, found, decision)
    statistics = analysis_lib.save_statistics(found, monitor_pass.version_dir(traffic.model_name, traffic.version))
    return VersionResult(
        model_name=traffic.model_name, version=traffic.version, current=current, rows=traffic.rows,
        requests=traffic.all_requests, rejections=found.rejections, baseline=base, relaxed=found.relaxed,
        features=found.features, prediction=found.prediction, quality=found.quality,
        reuse_candidates=candidates, decision=decision, statistics=str(statistics),
        distributions=analysis_lib.distributions(found), bias=found.bias, attribution=attribution,
        probing=probes, redaction=redacted.summary(settings))


def _act(monitor_pass: MonitorPass, traffic: VersionTraffic, found: analysis_lib.VersionAnalysis,
         decision: policy.Decision) -> policy.Decision:
    """Carry out a retrain or re-push; the checkpoint enters it before it starts (a
    window never acts twice, even after a crash). The decision with its outcome."""
    if decision.action not in policy.ACTIONS:
        return decision
    monitor_pass.checkpoint.start_action(monitor_pass.window.id, decision.action, traffic.version)
    monitor_pass.print_line(f"acting: {decision.because}")
    outcome = act.carry_out(monitor_pass.settings, decision, monitor_dir=monitor_pass.monitor_dir,
                            window_id=monitor_pass.window.id, labelled_rows=found.labelled_rows,
                            judged_version=traffic.version)
    monitor_pass.checkpoint.finish_action(monitor_pass.window.id, outcome.ok, outcome.to_dict())
    monitor_pass.acted = True
    for line in report_verdict.outcome_lines(report.json_safe(outcome.to_dict())):
        monitor_pass.print_line(f"outcome: {line}")      # in words; result.json keeps the whole outcome
    return policy.with_outcome(decision, outcome, monitor_pass.window.id)   # held for approval: an alert


def _analysed(monitor_pass: MonitorPass, traffic: WindowTraffic, files: logfiles.Triage,
              versions: List[VersionResult], not_judged: List[NotJudged]) -> MonitorResult:
    """The pass's result, with the window's decision (``policy.window_decision``) and
    where its report goes."""
    unattributed = None
    if traffic.unattributed.rejected:        # rejected calls that name no model version, of every request
        answered = sum(v.all_requests for v in traffic.versions.values())
        unattributed = rejections_lib.summarize(traffic.unattributed, answered, {})
    decision = policy.window_decision(monitor_pass.settings, versions=[(v.decision, v.current) for v in versions],
                                      unattributed=unattributed, any_not_judged=bool(not_judged),
                                      dry_run=monitor_pass.dry_run)
    reports = monitor_pass.monitor_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    window, started, finished = monitor_pass.window, monitor_pass.started, time.time()
    return MonitorResult(
        ANALYSED, window=window.id, resumed=window.resumed, dry_run=monitor_pass.dry_run,
        started=_iso(started), finished=_iso(finished), seconds=round(finished - started, 2),
        files=[p.name for p in window.files], quarantined_files=files.quarantined,
        incomplete_files=files.incomplete, rows=traffic.rows, not_judged=not_judged, requests=traffic.requests,
        unattributed_rejections=unattributed, decision=decision, versions=versions,
        report=ReportPaths(json=str(reports / f"{window.id}.json"), html=str(reports / f"{window.id}.html")))


# ------------------------------------------------------------------ 5. record, 7. commit
def _record(monitor_pass: MonitorPass, result: MonitorResult) -> None:
    """One ``tfxops.Monitor`` execution per judged version (and a ``tfxops.Repush``
    for a re-push), once: a pass that resumes a window whose record was written
    before a crash finds it and writes none."""
    for version in result.versions:
        found = None if monitor_pass.dry_run else \
            record.find_run(monitor_pass.store, result.window, str(version.version))
        if found is not None:
            version.mlmd = {"execution_id": found.id, "recorded_before": True}
        else:
            version.mlmd = _record_version(monitor_pass, result, version)


def _record_version(monitor_pass: MonitorPass, result: MonitorResult, version: VersionResult) -> dict:
    store, window = monitor_pass.store, result.window
    vdir = monitor_pass.version_dir(version.model_name, version.version)
    stats_artifact = record.new_artifact(store, "ExampleStatistics", str(vdir / "statistics"),
                                         {"split_names": '["serving"]', "window": window})
    anomalies_artifact = record.new_artifact(store, "ExampleAnomalies", str(vdir / "anomalies"),
                                             {"split_names": '["serving"]', "window": window})
    report_artifact = record.new_artifact(store, record.REPORT_TYPE, result.report.html,
                                          {"json": result.report.json, "window": window})
    decision, rejected = version.decision, version.rejections.as_dict()
    ids = record.record_run(store, monitor_pass.settings.pipeline_name, {
        "window": window, "model_version": str(version.version), "rows": version.rows,
        "files_quarantined": len(result.quarantined_files), "files_incomplete": len(result.incomplete_files),
        "action": decision.action, "triggered": decision.triggered,
        "because": decision.because, "reasons": decision.reasons, "dry_run": monitor_pass.dry_run,
        "flagged_features": version.flagged_features, "requests": version.requests,
        "relaxed": [r.line() for r in version.relaxed],
        "rejected_requests": rejected["rejected"], "rejection_rate": float(rejected["rate"]),
        "rejections": {k: v for k, v in rejected.items() if k in ("line", "causes", "missing_features")},
        "not_judged": [v.version for v in result.not_judged],
        "attribution_ndcg": version.attribution.ndcg if version.attribution is not None else None,
        "bias_flagged_slices": version.bias.flagged_slices if version.bias is not None else [],
        "probing_flagged_clients": [c.client for c in version.probing.flagged] if version.probing is not None else []},
        inputs=[("pushed_model", version.baseline.pushed_model), ("model", version.baseline.model),
                ("attributions", attribution_drift.push_time_artifact(store, version.attribution))],
        outputs=[("statistics", stats_artifact), ("anomalies", anomalies_artifact), ("report", report_artifact)])
    if isinstance(decision.outcome, act.RepushOutcome):
        ids["repush"] = record_repush(store, monitor_pass.settings.pipeline_name, decision.outcome,
                                      window=window, because=decision.because, replaced_version=version.version,
                                      monitor_execution=ids["execution_id"])
    return ids


def record_repush(store, pipeline_name: str, outcome: act.RepushOutcome, *, window: str, because: str,
                  replaced_version, monitor_execution: int) -> dict:
    """The re-push as its own execution, shaped like a Pusher's: the reused Model and
    its ModelCard in, the new PushedModel (``model_card`` naming the card in the
    version) out, so its version has lineage like any push."""
    card = {} if outcome.model_card is None else {"model_card": outcome.model_card}
    pushed = record.new_artifact(store, "PushedModel", outcome.pushed_destination, {
        "pushed": 1, "pushed_version": outcome.pushed_version, "pushed_destination": outcome.pushed_destination,
        "reused_model_id": outcome.model_id, "reason": because, **card})
    card_artifact = None if outcome.model_card_id is None else mlmd.artifact(store, outcome.model_card_id)
    return record.record_run(
        store, pipeline_name,
        {"window": window, "because": because, "monitor_execution": monitor_execution,
         "replaced_version": str(replaced_version)},
        inputs=[("model", mlmd.artifact(store, outcome.model_id)), ("model_card", card_artifact)],
        outputs=[("pushed_model", pushed)], execution_type=record.REPUSH_TYPE)


def _commit(monitor_pass: MonitorPass, traffic: WindowTraffic, files: logfiles.Triage, result: MonitorResult) -> None:
    """These files are analysed (or quarantined); the served version's statistics are
    the next window's drift baseline."""
    for version in result.versions:
        if version.current or len(result.versions) == 1:
            monitor_pass.checkpoint.set_previous_statistics(version.model_name, version.statistics)
    window_lib.commit_window(monitor_pass.checkpoint, monitor_pass.window,
                             {**traffic.file_results, **files.file_results()})


# ------------------------------------------------------------------ before the pass
def _recover_orphans(log_dir: Path, print_line: PrintLine) -> None:
    """Log files a writer left hidden when it died (kill -9): their complete records
    become a closed file this pass reads (``serving.log_writer.recover_orphans``)."""
    from serving.log_writer import recover_orphans

    try:
        recovered = recover_orphans(log_dir)
    except OSError as exc:
        print_line(f"cannot recover the orphaned request-log temp files in {log_dir} ({exc.strerror}); "
                   f"the server recovers them when it starts")
        return
    for item in recovered:
        print_line(f"recovered {item.path.name} from a request-log writer that died: {item.records} record(s)"
                   + (f", {item.dropped_bytes} bytes of a torn record dropped" if item.dropped_bytes else ""))


def require_local_dirs(settings: Settings) -> None:
    """``ConfigError`` naming the setting if request_log_dir, monitor_dir or
    feedback_dir is a URI: the monitor lists, moves and locks files there."""
    require_local("request_log_dir", settings.request_logs_path,
                  "the monitor lists, renames and quarantines the request-log files in place")
    require_local("monitor_dir", settings.monitor_path,
                  "the monitor locks its directory and replaces its checkpoint atomically")
    require_local("feedback_dir", settings.feedback_path, FEEDBACK_NEEDS_LOCAL)


def _check_log_dir(log_dir: Path) -> None:
    if not log_dir.is_dir():
        raise MonitorError(
            f"the request-log directory {log_dir} {'is not a directory' if log_dir.exists() else 'does not exist'}: "
            f"set request_log_dir (or --home) to where the server writes its request logs, or start the "
            f"server or proxy that writes there (tfxops serve)")


def _silent(line: str) -> None:
    """Where the lines go when nobody asked for them."""


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
