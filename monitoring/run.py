"""One monitor run: window -> statistics -> checks -> decision -> action -> report -> MLMD."""
import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from core import features as F
from monitoring import act, baseline as baseline_lib, checks, contract as contract_lib, feedback_path, logfiles
from monitoring import monitor_path, policy, record
from monitoring import lock as lock_lib, rejections as rejections_lib, report, window as window_lib
from core import pushdir
from core import mlmd
from core.config import Settings

log = logging.getLogger("tfxops.monitoring")
DECODE_ROWS = 65_536          # rows per RecordBatch fed to the statistics


class MonitorError(RuntimeError):
    """A run that cannot complete (the window stays open for the next run)."""


# ------------------------------------------------------------------ feedback
def load_feedback(directory: Path) -> Dict[Tuple[str, int], float]:
    """``(request_id, row) -> tips`` from every CSV in ``directory`` (columns
    ``request_id``, ``tips``, optional ``row``, default 0); later files win."""
    labels: Dict[Tuple[str, int], float] = {}
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


# ------------------------------------------------------------------ per-version accumulation
@dataclasses.dataclass
class Group:
    model_name: str
    version: Optional[int]
    stats: checks.StatsAccumulator
    pending: List[bytes] = dataclasses.field(default_factory=list)
    predictions: List[np.ndarray] = dataclasses.field(default_factory=list)
    requests: int = 0                      # answered requests
    rows: int = 0                          # rows in the statistics (answered and rejected)
    labelled: List[Tuple[bytes, float, float]] = dataclasses.field(default_factory=list)
    rejections: rejections_lib.Tally = dataclasses.field(default_factory=rejections_lib.Tally)
    types: Dict = dataclasses.field(default_factory=dict)      # column -> Arrow type fed so far
    signatures: Dict[str, int] = dataclasses.field(default_factory=dict)   # answered rows per logged signature

    def flush(self, decoder, force: bool = False) -> None:
        while self.pending and (force or len(self.pending) >= DECODE_ROWS):
            batch, self.pending = self.pending[:DECODE_ROWS], self.pending[DECODE_ROWS:]
            self.add_batch(decoder.decode(batch))

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

    def add_signatures(self, rows: Dict[str, int]) -> None:
        for name, n in rows.items():
            self.signatures[name] = self.signatures.get(name, 0) + n

    def rows_by_signature(self) -> Dict[str, int]:
        """The rows in the statistics (answered and rejected) per logged signature name."""
        out = dict(self.signatures)
        for name, n in self.rejections.rows_by_signature.items():
            out[name] = out.get(name, 0) + n
        return out


@dataclasses.dataclass
class WindowRead:
    """What reading a window's files gave: per (model, version) groups, the files
    read (for the checkpoint), those that could not be, and the rejected calls that
    name no model version."""
    groups: Dict[Tuple[str, Optional[int]], Group] = dataclasses.field(default_factory=dict)
    file_results: Dict[str, Dict] = dataclasses.field(default_factory=dict)
    unreadable: List[logfiles.Unreadable] = dataclasses.field(default_factory=list)
    unattributed: rejections_lib.Tally = dataclasses.field(default_factory=rejections_lib.Tally)

    def group(self, model_name: str, version: Optional[int]) -> Group:
        key = (model_name, version)
        if key not in self.groups:
            self.groups[key] = Group(model_name, version, checks.StatsAccumulator())
        return self.groups[key]


def _add_answered(group: Group, chunk: window_lib.Chunk, decoder, feedback: Dict) -> int:
    if not chunk.serialized:
        return 0
    decoder.check(chunk.serialized)
    group.pending.extend(chunk.serialized)
    group.predictions.append(chunk.predictions)
    group.requests += int((chunk.row_in_request == 0).sum())
    group.rows += len(chunk.serialized)
    group.add_signatures(chunk.signatures)
    if feedback:
        for i, rid in enumerate(chunk.request_ids):
            tips = feedback.get((rid, int(chunk.row_in_request[i])))
            if tips is not None:
                group.labelled.append((chunk.serialized[i], float(chunk.predictions[i]), tips))
    group.flush(decoder)
    return len(chunk.serialized)


def _add_rejected(group: Group, part: Optional[window_lib.Rejected], rows_decoder) -> int:
    """Rejected requests: counted, and what their clients sent joins the statistics."""
    if part is None:
        return 0
    batch = group.rejections.add(part, rows_decoder)
    if batch is None or not batch.num_rows:
        return 0
    group.add_batch(rejections_lib.for_statistics(batch))
    group.rows += batch.num_rows
    return batch.num_rows


def _read_files(parts: List[window_lib.Part], feedback: Dict, schema=None, rows_schema=None) -> WindowRead:
    """Decode and accumulate statistics for ``parts``, one at a time; raises
    ``window.NeedsInference`` when the examples do not fit ``schema``. Rows of
    rejected requests are read with ``rows_schema``'s types (not read without one)."""
    decoder = window_lib.ExampleDecoder(schema)
    rows_decoder = rejections_lib.RowsDecoder(rows_schema) if rows_schema is not None else None
    read = WindowRead()
    for decoded in window_lib.iter_parts(parts):
        name = decoded.part.name
        if decoded.error is not None:
            log.warning("cannot read log file %s now: %s", name, decoded.error)
            read.unreadable.append(logfiles.Unreadable.of(name, decoded.error))
            continue
        rows = 0
        for chunk in decoded.chunks:
            if chunk.version is None and not chunk.serialized:     # refused before a version was chosen
                read.unattributed.add(chunk.rejected, None)
                continue
            group = read.group(chunk.model_name, chunk.version)
            rows += _add_answered(group, chunk, decoder, feedback)
            rows += _add_rejected(group, chunk.rejected, rows_decoder)
        read.file_results[name] = _analysed(decoded.read, rows)
    for group in read.groups.values():
        group.flush(decoder, force=True)
    return read


def _analysed(read: window_lib.PartRead, rows: int) -> Dict:
    """What the checkpoint records of a part read whole (``window.commit_window``)."""
    return {"status": "analysed", "records": len(read.records), "rows": rows, "offset": read.end,
            "crc": read.crc, "inode": read.inode}


def _read_files_in_worker(parts: List[window_lib.Part], feedback: Dict, schema=None, rows_schema=None):
    """``_read_files`` in a worker process: what it returns must pickle (no generators)."""
    try:
        read = _read_files(parts, feedback, schema, rows_schema)
    except window_lib.NeedsInference as exc:
        return str(exc)
    groups = {key: {"accumulators": g.stats.accumulators, "rows_in_stats": g.stats.rows,
                    "predictions": np.concatenate(g.predictions) if g.predictions else np.zeros(0, np.float32),
                    "requests": g.requests, "rows": g.rows, "labelled": g.labelled, "rejections": g.rejections,
                    "signatures": g.signatures}
              for key, g in read.groups.items()}
    return groups, read.file_results, read.unreadable, read.unattributed


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
    import os
    wanted = settings.monitor_workers or min(4, os.cpu_count() or 1)
    # below ~20 MB of logs a worker's start-up costs more than it saves
    total = sum(p.stat().st_size for p in files if p.exists())
    return max(1, min(wanted, len(files), total // (20 * 2**20) + 1))


def _read_window(win: window_lib.Window, feedback: Dict, workers: int = 1, schema=None) -> WindowRead:
    """All files of the window; with ``workers`` > 1, split across forked processes
    (decoding is Python- and C++-bound per record) and their TFDV accumulators merged.
    ``schema`` only speeds decoding up: examples that do not fit it are decoded
    again with inferred types (see ``window.ExampleDecoder``); rows of rejected
    requests are always read with its types."""
    if workers <= 1:
        try:
            return _read_files(win.parts, feedback, schema, schema)
        except window_lib.NeedsInference as exc:
            if schema is None:
                raise
            log.info("decoding with inferred types: %s", exc)
            return _read_files(win.parts, feedback, None, schema)
    import multiprocessing

    shares = _split(win.parts, workers)
    with multiprocessing.get_context("fork").Pool(len(shares)) as pool:
        results = pool.starmap(_read_files_in_worker, [(share, feedback, schema, schema) for share in shares])
        if any(isinstance(r, str) for r in results):
            log.info("decoding with inferred types: %s", next(r for r in results if isinstance(r, str)))
            results = pool.starmap(_read_files_in_worker, [(share, feedback, None, schema) for share in shares])
    read = WindowRead()
    partial: Dict[Tuple[str, Optional[int]], list] = {}
    for part_groups, part_files, part_unreadable, part_unattributed in results:
        read.file_results.update(part_files)
        read.unreadable.extend(part_unreadable)
        read.unattributed.merge(part_unattributed)
        for key, g in part_groups.items():
            group = read.group(*key)
            partial.setdefault(key, []).append(g["accumulators"])
            group.stats.rows += g["rows_in_stats"]
            group.predictions.append(g["predictions"])
            group.requests += g["requests"]
            group.rows += g["rows"]
            group.add_signatures(g["signatures"])
            group.labelled.extend(g["labelled"])
            group.rejections.merge(g["rejections"])
    for key, group in read.groups.items():
        acc = group.stats
        acc.accumulators = [gen.merge_accumulators([a[i] for a in partial[key]])
                            for i, gen in enumerate(acc.generators)]
    read.unreadable.sort(key=lambda u: u.file)
    read.file_results = dict(sorted(read.file_results.items()))
    return read


# ------------------------------------------------------------------ analysis of one version
def _eval_prediction_stats(settings: Settings, base: baseline_lib.Baseline, mdir: Path):
    import tensorflow_data_validation as tfdv

    cache = mdir / "baselines" / f"model-{base.model.id}" / "eval_predictions.pb"
    if cache.is_file():
        return tfdv.load_stats_binary(str(cache))
    values = checks.evaluation_predictions(base.model_path, base.eval_examples_pattern())
    if values.size == 0:
        return None
    stats = checks.statistics_of({checks.PREDICTION: values})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_bytes(stats.SerializeToString())
    tmp.replace(cache)
    return stats


def _labelled_arrays(labelled) -> Tuple[np.ndarray, np.ndarray, List[Dict]]:
    from core.examples import example_to_row
    import tensorflow as tf

    rows, scores, tips, fares = [], [], [], []
    for serialized, score, tip in labelled:
        row = example_to_row(tf.train.Example.FromString(serialized))
        row[F.LABEL_KEY] = tip
        rows.append(row)
        scores.append(score)
        tips.append(tip)
        fare = row.get(F.FARE_KEY)
        fares.append(np.nan if fare is None else float(fare))
    labels = checks.labels_from_rows(np.asarray(tips, np.float64), np.asarray(fares, np.float64))
    return labels, np.asarray(scores, np.float64), rows


def _reuse_candidates(store, current_model_id: int, stats, rows_by_signature: Dict[str, int]) -> List[Dict]:
    """Every other blessed model: does this window match its training data (judged on
    what its signatures take, as the served model's)?"""
    out = []
    for other in baseline_lib.blessed_models(store):
        if other.model.id == current_model_id:
            continue
        try:
            schema = contract_lib.effective(other.load_schema(), rows_by_signature,
                                            rejections_lib.signature_inputs(other.model_path)).schema
            result = checks.validate(stats, other.load_statistics("train"), schema)
        except Exception as exc:  # noqa: BLE001 - a model whose files are gone
            log.warning("cannot compare with model %s: %s", other.model.id, exc)
            continue
        features = result["features"]
        over = [f.name for f in features if f.over_skew]
        errors = sum(f.error_anomalies for f in features)
        watched = [f for f in features if f.skew is not None and f.skew_threshold]
        worst = max(watched, key=lambda f: f.skew / f.skew_threshold, default=None)
        out.append({"model_id": other.model.id, "model_uri": other.model.uri, "model_path": other.model_path,
                    "over": over, "errors": errors, "matches": not over and not errors,
                    "score": worst.skew / worst.skew_threshold if worst else 0.0,
                    "why": ("no feature over its skew threshold and no ERROR anomaly against its training "
                            "statistics" + (f" (closest to its threshold: {worst.name} {worst.skew:.3f} / "
                                            f"{worst.skew_threshold:g})" if worst else ""))})
    return out


def _decoding_schema(settings: Settings):
    """The schema whose types speed up decoding (a hint, never the baseline: the
    checks use the served model's schema from MLMD); None if it cannot be read."""
    try:
        import tensorflow_data_validation as tfdv
        return tfdv.load_schema_text(settings.schema_path)
    except Exception:  # noqa: BLE001 - decoding then infers types
        return None


def _current_version(settings: Settings) -> Optional[int]:
    """The newest version in the push directory: what a ``latest`` server serves."""
    return max(pushdir.existing_versions(str(settings.model_push_dir)), default=None)


# ------------------------------------------------------------------ the run
def monitor_once(settings: Settings, dry_run: bool = False, out=None) -> Dict:
    """Analyse the next window under the monitor lock (``monitoring.lock``: one run at
    a time per monitor directory); returns the result (also written as JSON/HTML).
    ``MonitorError`` for a request-log directory that does not exist; ``lock.LockBusy``
    when another monitor holds the lock longer than ``monitor_lock_wait_seconds``."""
    say = out or (lambda line: None)
    _check_log_dir(settings.request_logs_path)
    with lock_lib.hold(monitor_path(settings), settings.monitor_lock_wait_seconds, say):
        if not dry_run:
            _recover_orphans(settings.request_logs_path, say)
        return _monitor_window(settings, dry_run, say)


def _recover_orphans(log_dir: Path, say) -> None:
    """Log files a writer left hidden when it died (kill -9): their complete records
    become a closed file this run reads (``serving.request_log.recover_orphans``)."""
    from serving.request_log import recover_orphans

    try:
        recovered = recover_orphans(log_dir)
    except OSError as exc:
        say(f"cannot recover the orphaned request-log temp files in {log_dir} ({exc.strerror}); "
            f"the server recovers them when it starts")
        return
    for item in recovered:
        say(f"recovered {item.path.name} from a request-log writer that died: {item.records} record(s)"
            + (f", {item.dropped_bytes} bytes of a torn record dropped" if item.dropped_bytes else ""))


def _check_log_dir(log_dir: Path) -> None:
    if not log_dir.is_dir():
        raise MonitorError(
            f"the request-log directory {log_dir} {'is not a directory' if log_dir.exists() else 'does not exist'}: "
            f"set request_log_dir (or --home) to where the server writes its request logs, or start the "
            f"server or proxy that writes there (tfxops serve)")


def _monitor_window(settings: Settings, dry_run: bool, say) -> Dict:
    import tensorflow_data_validation as tfdv

    mdir = monitor_path(settings)
    checkpoint = window_lib.Checkpoint(mdir)
    win = window_lib.open_window(checkpoint, settings.request_logs_path, settings.monitor_max_files,
                                 persist=not dry_run)
    started = time.time()
    if not win.files:
        if win.id and not dry_run:       # an open window whose files were all removed
            window_lib.commit_window(checkpoint, win, {})
        say(f"no new requests in {settings.request_logs_path} since the last run; nothing to do")
        return {"status": "no_new_requests", "window": None, "rows": 0, "log_dir": str(settings.request_logs_path)}
    say(f"window {win.id}: {len(win.files)} log file(s){' (resuming a crashed run)' if win.resumed else ''}")

    feedback = load_feedback(feedback_path(settings))
    read = _read_window(win, feedback, workers_for(settings, win.files), _decoding_schema(settings))
    if not dry_run:
        window_lib.fix_ends(checkpoint, win, {name: r["offset"] for name, r in read.file_results.items()})
    files = logfiles.triage(read.unreadable, settings.request_logs_path, mdir,
                            settings.monitor_incomplete_grace_seconds, move=not dry_run)
    if not read.groups and not read.unattributed.rejected and not files.quarantined:
        return _nothing_complete(checkpoint, win, files, dry_run, say)
    groups, total_rows = read.groups, sum(g.rows for g in read.groups.values())
    timings = {"read_decode_statistics": time.time() - started}
    mark = time.time()

    store = None
    if groups:
        mlmd.open_store(settings)        # MetadataError (exit 2) if there is no store: never create one
        store = mlmd.open_store(settings, readonly=False)
    wdir = mdir / "windows" / win.id
    current = _current_version(settings)
    results, acted, not_judged = [], None, []
    for key in sorted(groups, key=lambda k: (k[0], k[1] or 0)):
        group = groups[key]
        base = _baseline_or_none(store, group, not_judged)
        if base is None:
            continue
        stats = group.stats.result()
        schema = base.load_schema()
        train_stats = base.load_statistics("train")
        prev_path = checkpoint.data["previous_statistics"].get(group.model_name)
        previous = tfdv.load_stats_binary(prev_path) if prev_path and Path(prev_path).is_file() else None
        inputs = rejections_lib.signature_inputs(base.model_path)
        contract = contract_lib.effective(schema, group.rows_by_signature(), inputs)
        validation = checks.validate(stats, train_stats, contract.schema, previous)
        features = validation["features"]
        rejected, alert = _judge_rejections(settings, group, schema, train_stats, validation, inputs)
        served = np.concatenate(group.predictions) if group.predictions else np.zeros(0, np.float32)
        prediction = checks.prediction_drift(served, _eval_prediction_stats(settings, base, mdir),
                                             settings.prediction_drift_threshold)
        labels, scores, labelled_rows = _labelled_arrays(group.labelled) if group.labelled else (
            np.zeros(0, np.int8), np.zeros(0), [])
        quality = checks.quality(labels, scores, base.evaluation_metrics(), settings.monitor_min_labelled,
                                 settings.trigger_quality_drop)
        reasons = policy.reasons_for(settings, features, prediction, quality)
        is_current = current is None or group.version == current
        candidates = []
        if reasons and settings.reuse_blessed_models and is_current:
            candidates = _reuse_candidates(store, base.model.id, stats, group.rows_by_signature())
        matches = sorted((c for c in candidates if c["matches"]), key=lambda c: c["score"])
        reuse = matches[0] if matches else None
        blocker = None
        if reuse is None and settings.retrain_with_feedback and not labelled_rows:
            blocker = ("no labelled requests in this window to add as a data span "
                       "(retrain_with_feedback); a rerun on unchanged data would train for nothing")
        decision = policy.decide(settings, reasons, group.rows, win.id, is_current and acted is None,
                                 checkpoint.action_for_window(win.id), checkpoint.last_action(),
                                 dry_run, reuse, alert=alert)
        if blocker and (decision.action == policy.RETRAIN
                        or decision.because.startswith("dry run: would rerun")):
            decision = policy.Decision(policy.NONE, True, reasons, f"not acted on: {blocker}", dry_run)

        # -- act (the checkpoint records the action before it starts: never twice)
        repushed_artifact = None
        if decision.action in policy.ACTIONS:
            entry = {"window": win.id, "action": decision.action, "time": time.time(),
                     "version": group.version, "state": "started"}
            checkpoint.data["actions"].append(entry)
            checkpoint.save()
            say(f"acting: {decision.because}")
            if decision.action == policy.RETRAIN:
                span = act.write_span(labelled_rows, mdir / "spans", win.id) if settings.retrain_with_feedback else None
                data_dir = act.retrain_data_dir(settings, mdir) if settings.retrain_with_feedback else Path(settings.data_dir)
                outcome = act.retrain(settings, data_dir)
                outcome["span"] = str(span) if span else None
                outcome["span_rows"] = len(labelled_rows)
            else:
                outcome = act.repush(settings, reuse["model_path"])
                outcome["model_id"] = reuse["model_id"]
                repushed_artifact = record.new_artifact(store, "PushedModel", outcome["pushed_destination"], {
                    "pushed": 1, "pushed_version": outcome["pushed_version"],
                    "pushed_destination": outcome["pushed_destination"], "reused_model_id": reuse["model_id"],
                    "reason": decision.because})
            entry.update(state="done" if outcome.get("ok") else "failed", outcome=outcome)
            checkpoint.save()
            decision.outcome = outcome
            acted = decision
            say(f"outcome: {json.dumps(report._clean(outcome))}")

        # -- files: statistics, anomalies (TFX's layout), for MLMD and the next window's drift
        vdir = wdir / f"{group.model_name}-{group.version}"
        (vdir / "statistics" / "Split-serving").mkdir(parents=True, exist_ok=True)
        (vdir / "anomalies" / "Split-serving").mkdir(parents=True, exist_ok=True)
        stats_file = vdir / "statistics" / "Split-serving" / "FeatureStats.pb"
        stats_file.write_bytes(stats.SerializeToString())
        (vdir / "anomalies" / "Split-serving" / "SchemaDiff.pb").write_bytes(
            validation["anomalies_proto"].SerializeToString())
        dists = {f.name: report.distribution(checks.feature_stats(train_stats, f.name),
                                             checks.feature_stats(stats, f.name)) for f in features}
        if prediction.get("available"):
            prediction["distribution"] = report.distribution(
                checks.feature_stats(prediction["baseline_stats"], checks.PREDICTION),
                checks.feature_stats(prediction["served_stats"], checks.PREDICTION))
        results.append({
            "model_name": group.model_name, "version": group.version, "current": is_current,
            "rows": group.rows, "requests": group.all_requests, "rejections": rejected.as_dict(),
            "baseline": base.describe(), "relaxed": [r.as_dict() for r in contract.relaxed],
            "features": [f.as_dict() for f in features],
            "flagged_features": sorted(f.name for f in features if f.flagged),
            "skewed_features": sorted(f.name for f in features if f.over_skew),
            "anomalous_features": sorted(f.name for f in features if f.anomalies),
            "error_anomalies": sum(f.error_anomalies for f in features),
            "prediction": {k: v for k, v in prediction.items() if not k.endswith("_stats")},
            "quality": quality,
            "reuse_candidates": [{k: v for k, v in c.items() if k != "model_path"} for c in candidates],
            "decision": decision.as_dict(),
            "statistics": str(stats_file), "distributions": dists,
            "_artifacts": (base, vdir, repushed_artifact, decision)})

    timings["checks_and_actions"] = time.time() - mark
    mark = time.time()

    unattributed = _unattributed(read.unattributed, groups)
    result = {"status": "analysed", "window": win.id, "resumed": win.resumed, "dry_run": dry_run,
              "started": _iso(started), "finished": _iso(time.time()),
              "seconds": round(time.time() - started, 2),
              "files": [p.name for p in win.files], "quarantined_files": files.quarantined,
              "incomplete_files": files.incomplete, "rows": total_rows, "not_judged": not_judged,
              "requests": sum(g.all_requests for g in groups.values()) + read.unattributed.rejected,
              "unattributed_rejections": unattributed.as_dict() if unattributed else None,
              "decision": _window_decision(settings, results, unattributed, not_judged, dry_run),
              "versions": results}
    rdir = mdir / "reports"
    rdir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = rdir / f"{win.id}.json", rdir / f"{win.id}.html"
    result["report"] = {"json": str(json_path), "html": str(html_path)}

    # -- MLMD: one tfxops.Monitor execution per served version in the window
    for r in results:
        r["mlmd"] = _record_version(store, settings, result, r, dry_run)
    timings["record_and_report"] = time.time() - mark
    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    report.write_json(result, json_path)
    report.write_html(result, html_path)

    # -- commit: these files are analysed; this window is the next one's drift baseline
    # (a dry run only reports: the next real run analyses the same requests)
    if dry_run:
        say(summary_line(result))
        return result
    for r in results:
        if r["current"] or len(results) == 1:
            checkpoint.data["previous_statistics"][r["model_name"]] = r["statistics"]
    window_lib.commit_window(checkpoint, win, {**read.file_results, **files.file_results()})
    say(summary_line(result))
    return result


def summary_line(result: Dict) -> str:
    if result.get("status") == "incomplete":
        return f"window {result['window']}: {_files_line(result)}; nothing else to read yet"
    if result.get("status") != "analysed":
        return "no new requests"
    d = result["decision"]
    flagged = sorted({f for v in result["versions"] for f in v["flagged_features"]})
    rejected = [v["rejections"]["line"] for v in result["versions"] if v["rejections"]["rejected"]]
    if result.get("unattributed_rejections"):
        rejected.append(f"no model version: {result['unattributed_rejections']['line']}")
    unjudged = ", ".join(f"version {v['version']} ({v['rows']} rows)" for v in result.get("not_judged", []))
    return (f"window {result['window']}: {result['rows']} rows, {_files_line(result)}; "
            + "".join(f"{line}; " for line in rejected)
            + (f"not judged (no lineage): {unjudged}; " if unjudged else "")
            + f"flagged: {', '.join(flagged) or 'none'}; decision: {d['action']} ({d['because']}); "
            f"report: {result['report']['html']}")


def _files_line(result: Dict) -> str:
    incomplete = len(result.get("incomplete_files", []))
    return f"{len(result.get('quarantined_files', []))} file(s) quarantined" + (
        f", {incomplete} file(s) incomplete (retried next run)" if incomplete else "")


# ------------------------------------------------------------------ steps of a run (issue 12)
def _nothing_complete(checkpoint, win: window_lib.Window, files: logfiles.Triage, dry_run: bool, say) -> Dict:
    """Every file of the window is still being written: nothing is committed, and the
    next run reads them again."""
    if not dry_run:
        window_lib.release_window(checkpoint)
    result = {"status": "incomplete", "window": win.id, "rows": 0, "files": [p.name for p in win.files],
              "incomplete_files": files.incomplete, "quarantined_files": [], "dry_run": dry_run}
    say(summary_line(result))
    return result


def _baseline_or_none(store, group: Group, not_judged: List[Dict]) -> Optional[baseline_lib.Baseline]:
    """The version's baseline; None (and the version listed as not judged) when MLMD
    has no lineage for it: the window is still analysed for the others, and committed."""
    try:
        return baseline_lib.for_version(store, group.version)
    except baseline_lib.NoLineageError as exc:
        log.warning("version %s not judged: %s", group.version, exc)
        not_judged.append({"model_name": group.model_name, "version": group.version, "rows": group.rows,
                           "requests": group.all_requests, "reason": f"no lineage: not judged: {exc}"})
        return None


def _judge_rejections(settings: Settings, group: Group, schema, train_stats, validation: Dict,
                      inputs: Dict[str, set]):
    """The version's rejected requests against its schema's SERVING features and its
    training data (``inputs``: its signatures' input names): a summary, the alert the
    policy makes of it, and the findings as SERVING anomalies (in the features and the
    Anomalies proto)."""
    baselines = {f.name: rejections_lib.training_empty_fraction(train_stats, f.name)
                 for f in checks.serving_features(schema)}
    summary = rejections_lib.summarize(group.rejections, group.requests, baselines, inputs)
    alert = policy.rejection_alert(settings, summary)
    rejections_lib.flag(summary, validation["features"], validation["anomalies_proto"], alerting=alert is not None)
    return summary, alert


def _unattributed(tally: rejections_lib.Tally, groups: Dict) -> Optional[rejections_lib.Summary]:
    """Rejected calls that name no model version, against every request of the window."""
    if not tally.rejected:
        return None
    return rejections_lib.summarize(tally, sum(g.all_requests for g in groups.values()), {})


def _window_decision(settings: Settings, results: List[Dict], unattributed, not_judged: List[Dict],
                     dry_run: bool) -> Dict:
    """The run's decision: the action taken (or alert), else the current version's."""
    main = next((r for r in results if r["decision"]["action"] != policy.NONE), None) or \
        next((r for r in results if r["current"]), None) or (results[0] if results else None)
    if main is not None and main["decision"]["action"] != policy.NONE:
        return main["decision"]
    alert = policy.rejection_alert(settings, unattributed, scope="before any model version was chosen")
    if alert is not None:
        return policy.decide(settings, [], 0, "", False, None, None, dry_run, None, alert=alert).as_dict()
    if main is not None:
        return main["decision"]
    return policy.Decision(policy.NONE, False, [], "no version in the window could be judged (no lineage in "
                           "MLMD)" if not_judged else "every log file in the window was unreadable",
                           dry_run).as_dict()


def _record_version(store, settings: Settings, result: Dict, r: Dict, dry_run: bool) -> Dict:
    """The version's ``tfxops.Monitor`` execution (and any re-push's), once: a run that
    resumes a window whose record was written before a crash finds it and writes none."""
    base, vdir, repushed, decision = r.pop("_artifacts")
    window = result["window"]
    found = None if dry_run else record.find_run(store, window, str(r["version"]))
    if found is not None:
        return {"execution_id": found.id, "recorded_before": True}
    html_path, json_path = result["report"]["html"], result["report"]["json"]
    stats_artifact = record.new_artifact(store, "ExampleStatistics", str(vdir / "statistics"),
                                         {"split_names": '["serving"]', "window": window})
    anomalies_artifact = record.new_artifact(store, "ExampleAnomalies", str(vdir / "anomalies"),
                                             {"split_names": '["serving"]', "window": window})
    report_artifact = record.new_artifact(store, record.REPORT_TYPE, html_path, {"json": json_path, "window": window})
    rejected = r["rejections"]
    ids = record.record_run(store, settings.pipeline_name, {
        "window": window, "model_version": str(r["version"]), "rows": r["rows"],
        "files_quarantined": len(result["quarantined_files"]), "files_incomplete": len(result["incomplete_files"]),
        "action": decision.action, "triggered": decision.triggered,
        "because": decision.because, "reasons": decision.reasons, "dry_run": dry_run,
        "flagged_features": r["flagged_features"], "requests": r["requests"],
        "relaxed": [x["line"] for x in r["relaxed"]],
        "rejected_requests": rejected["rejected"], "rejection_rate": float(rejected["rate"]),
        "rejections": {k: v for k, v in rejected.items() if k in ("line", "causes", "missing_features")},
        "not_judged": [v["version"] for v in result["not_judged"]]},
        inputs=[("pushed_model", base.pushed_model), ("model", base.model)],
        outputs=[("statistics", stats_artifact), ("anomalies", anomalies_artifact), ("report", report_artifact)])
    if repushed is not None:
        reused = store.get_artifacts_by_id([decision.reuse["model_id"]])[0]
        ids["repush"] = record.record_run(
            store, settings.pipeline_name,
            {"window": window, "because": decision.because, "monitor_execution": ids["execution_id"],
             "replaced_version": str(r["version"])},
            inputs=[("model", reused)], outputs=[("pushed_model", repushed)], execution_type=record.REPUSH_TYPE)
    return ids


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
