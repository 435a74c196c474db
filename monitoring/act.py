"""Actions: a new data span from labelled requests, a pipeline rerun, a re-push.
``carry_out`` does what a ``policy.Decision`` says and returns what happened.

Spans and the retraining data directory live under ``<monitor_dir>`` (never in
the repository's data/):

    <monitor_dir>/spans/span-<window>.csv     labelled requests of one window,
                                              CsvExampleGen's columns, accepted for training
    <monitor_dir>/spans/pending/              a new span, until the poisoning guard
                                              (``monitoring.poisoning``) accepts it; a span it
                                              holds stays there for ``tfxops approve``
                                              (``monitoring.approval``)
    <monitor_dir>/retrain_data/               what the rerun's CsvExampleGen reads:
        original-<name>.csv -> <data_dir>/<name>.csv   (retrain_include_original; a copy
                                              when data_dir is a URI)
        span-<window>.csv   -> ../spans/span-<window>.csv
"""
import csv
import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

from core import audit, redact
from core import features as F
from core import storage
from core.storage import Location
from core.config import Settings
from monitoring import approval, poisoning, policy
from monitoring.reuse import ReuseCandidate

if TYPE_CHECKING:                    # imported where a retrain runs (TFX is heavy)
    from pipeline.runner import RunSummary

log = logging.getLogger("tfxops.monitoring")


@dataclasses.dataclass
class RetrainOutcome:
    """A pipeline rerun; ``run_id`` is None when it never started (pre-flight)."""
    ok: bool
    error: Optional[str] = None
    run_id: Optional[str] = None
    blessed: Optional[bool] = None
    pushed: bool = False
    pushed_version: Optional[str] = None
    data_dir: str = ""
    log: str = ""
    span: Optional[str] = None       # the window's labelled requests as a data span
    span_rows: int = 0
    held: str = ""                   # why the retrain waits for approval ("": it did not wait)
    not_pushed_reason: Optional[str] = None   # why a run that succeeded pushed nothing (the
                                     # trusted holdout, the Evaluator's gates, already pushed)
    review: Optional[Dict] = None    # the poisoning guard's findings (``poisoning.SpanReview``)
    summary_text: str = ""           # the run's summary as ``tfxops run`` prints it (not in the report)

    def to_dict(self) -> Dict:
        if self.run_id is None:
            out = {"ok": self.ok, "error": self.error}
        else:
            out = {"ok": self.ok, "run_id": self.run_id, "blessed": self.blessed, "pushed": self.pushed,
                   "pushed_version": self.pushed_version, "data_dir": self.data_dir, "log": self.log}
            if self.not_pushed_reason:
                out["not_pushed_reason"] = self.not_pushed_reason
            if not self.ok:
                out["error"] = self.error
        out.update(span=self.span, span_rows=self.span_rows)
        if self.review is not None:
            out.update(held=self.held, review=self.review)
        return out


@dataclasses.dataclass
class RepushOutcome:
    """A previously blessed model published again as a new version."""
    ok: bool
    pushed: bool
    pushed_version: str
    pushed_destination: str
    model_id: int
    model_card_id: Optional[int] = None     # the ModelCard artifact written into the version
    model_card: Optional[str] = None        # its JSON file in the version

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


Outcome = Union[RetrainOutcome, RepushOutcome]


def carry_out(settings: Settings, decision: policy.Decision, *, monitor_dir: Path, window_id: str,
              labelled_rows: List[Dict], judged_version) -> Outcome:
    """Do what ``decision`` (a ``retrain`` or ``repush``) says. A retrain with
    ``retrain_with_feedback`` first adds the window's labelled rows as a data span.
    The decision and what came of it go into the audit trail (``core.audit``),
    about ``judged_version``: the served version whose traffic the decision judged."""
    served = str(judged_version)
    audit.record(settings, audit.MONITOR_DECISION,
                 f"window {window_id}: {decision.action}: {'; '.join(decision.reasons)}; {decision.because}",
                 audit.version_evidence(settings.model_push_dir, served),
                 model_version=served, actor=audit.actor_name("monitor"))
    outcome = _carry_out(settings, decision, monitor_dir, window_id, labelled_rows, served)
    _audit_outcome(settings, window_id, served, outcome, audit.actor_name("monitor"))
    return outcome


def _audit_outcome(settings: Settings, window_id: str, served, outcome: Outcome, actor: str) -> None:
    """The retrain or re-push of a window in the audit trail, with what came of it."""
    replaced = f"window {window_id}, served version {served}"
    if isinstance(outcome, RetrainOutcome) and outcome.held:
        log.warning("window %s: %s", window_id, outcome.held)
        audit.record(settings, audit.RETRAIN_HELD,
                     f"{replaced}: {outcome.held}; the span ({outcome.span_rows} rows) is kept aside in "
                     f"{outcome.span}: release it with `tfxops approve {window_id}`, discard it with "
                     f"`tfxops approve --reject {window_id}`", model_version=served, actor=actor)
        return
    if isinstance(outcome, RepushOutcome):
        audit.record(settings, audit.REPUSH,
                     f"{replaced}: blessed model {outcome.model_id} re-pushed as version {outcome.pushed_version}",
                     {"model_artifact_id": outcome.model_id}, model_version=outcome.pushed_version,
                     actor=actor)
        return
    result = (f"run {outcome.run_id}: " + ("blessed" if outcome.blessed else "not blessed")
              + (f", pushed version {outcome.pushed_version}" if outcome.pushed else
                 f", nothing pushed ({outcome.not_pushed_reason})" if outcome.not_pushed_reason else ", nothing pushed")
              if outcome.ok else f"failed: {outcome.error}")
    audit.record(settings, audit.RETRAIN, f"{replaced}: retrained on {outcome.data_dir or settings.data_dir}: {result}",
                 model_version=outcome.pushed_version, actor=actor)


def _carry_out(settings: Settings, decision: policy.Decision, monitor_dir: Path, window_id: str,
               labelled_rows: List[Dict], served: str) -> Outcome:
    if decision.action == policy.REPUSH:
        return repush(settings, decision.reuse)
    if not settings.retrain_with_feedback:
        return retrain(settings, settings.data_dir)
    span = write_span(labelled_rows, approval.pending_dir(monitor_dir), window_id)
    if span is not None:
        try:
            review = poisoning.review(settings, span, training_history(settings, monitor_dir))
        except OSError as exc:
            return _unreadable_history(settings, monitor_dir, window_id, span, len(labelled_rows), served, exc)
        if review.held:
            approval.hold(monitor_dir, window_id, span, review.suspicions() or [review.verdict()],
                          review.to_dict(), served)
            return RetrainOutcome(ok=False, error=review.verdict(), span=str(span), span_rows=len(labelled_rows),
                                  held=review.verdict(), review=review.to_dict())
        span = accept_span(span, monitor_dir)
    outcome = retrain_on_spans(settings, monitor_dir)
    outcome.span, outcome.span_rows = (str(span) if span else None), len(labelled_rows)
    outcome.review = review.to_dict() if span else None
    return outcome


def _unreadable_history(settings: Settings, monitor_dir: Path, window_id: str, span: Path, rows: int, served: str,
                        exc: OSError) -> RetrainOutcome:
    """The training history cannot be read: the retrain fails, naming the fix; its span
    waits for approval (``tfxops approve`` once data_dir is fixed)."""
    error = unreadable_data_dir(settings, exc)
    approval.hold(monitor_dir, window_id, span, [error], {"span": str(span), "rows": rows}, served)
    return RetrainOutcome(ok=False, span=str(span), span_rows=rows, error=error)


def unreadable_data_dir(settings: Settings, exc: OSError) -> str:
    return (f"cannot read the original CSVs in data_dir {settings.data_dir} ({exc}): set data_dir to "
            f"the training data, or retrain_include_original=false to retrain on the spans only")


def accept_span(span: Path, monitor_dir: Path) -> Path:
    """A reviewed span joins the training spans."""
    target = monitor_dir / "spans" / span.name
    os.replace(span, target)
    return target


def training_history(settings: Settings, monitor_dir: Path) -> List[Location]:
    """What a new span is compared with: data_dir's CSVs (the curated training data,
    read even with ``retrain_include_original`` off when they can be) and the spans
    accepted before. ``OSError`` when data_dir cannot be read and the retrain needs it."""
    try:
        originals = [storage.join(settings.data_dir, name) for name in _original_csvs(settings.data_dir)]
    except OSError:
        if settings.retrain_include_original:
            raise
        originals = []
    return originals + sorted((monitor_dir / "spans").glob("span-*.csv"))


def retrain_on_spans(settings: Settings, monitor_dir: Path, out=None) -> RetrainOutcome:
    """Rerun the pipeline on the original CSVs and every accepted span."""
    try:
        data_dir = retrain_data_dir(settings, monitor_dir)
    except OSError as exc:
        return RetrainOutcome(ok=False, error=unreadable_data_dir(settings, exc))
    return retrain(settings, data_dir, out=out)


def release(settings: Settings, window_id: str, approver: str, out=None) -> RetrainOutcome:
    """``tfxops approve WINDOW``: the held span joins the training spans, and the
    pipeline reruns now on them (audited with the approver). The caller holds the
    monitor lock; ``approval.ApprovalError`` for a window with no span waiting."""
    monitor_dir = settings.monitor_path
    entry = approval.approve(monitor_dir, window_id, approver)
    audit.record(settings, audit.RETRAIN_APPROVED,
                 f"window {window_id}: span {entry.span} ({entry.rows} rows) approved for retraining by "
                 f"{approver}; it was held because: {'; '.join(entry.reasons)}",
                 model_version=entry.judged_version, actor=approver)
    outcome = retrain_on_spans(settings, monitor_dir, out=out)
    outcome.span, outcome.span_rows = entry.span, entry.rows
    _audit_outcome(settings, window_id, entry.judged_version, outcome, approver)
    return outcome


def discard(settings: Settings, window_id: str, rejecter: str) -> approval.Hold:
    """``tfxops approve --reject WINDOW``: the held span is deleted (audited)."""
    entry = approval.reject(settings.monitor_path, window_id, rejecter)
    audit.record(settings, audit.RETRAIN_REJECTED,
                 f"window {window_id}: span ({entry.rows} rows) rejected and discarded by {rejecter}; it was "
                 f"held because: {'; '.join(entry.reasons)}", model_version=entry.judged_version, actor=rejecter)
    return entry


def write_span(rows: List[Dict], spans_dir: Path, window_id: str) -> Optional[Path]:
    """Labelled rows (dicts of raw values, ``tips`` included) as a CSV span: request
    rows, so owner-only (directory 0700, file 0600: ``core.redact``)."""
    if not rows:
        return None
    redact.private_dir(spans_dir)
    path = spans_dir / f"span-{window_id}.csv"
    tmp = spans_dir / f".{path.name}.tmp"
    with open(redact.open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=F.CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in F.CSV_COLUMNS})
    os.replace(tmp, path)
    return path


def retrain_data_dir(settings: Settings, monitor_dir: Path) -> Path:
    """Rebuild ``<monitor_dir>/retrain_data`` from the original CSVs and every span."""
    target = monitor_dir / "retrain_data"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if settings.retrain_include_original:
        _add_original_csvs(settings.data_dir, target)
    for span in sorted((monitor_dir / "spans").glob("span-*.csv")):
        link_or_copy(span, target / span.name)
    return target


def _original_csvs(data_dir: Location) -> List[str]:
    return sorted(n for n in storage.listdir(data_dir) if n.endswith(".csv"))


def _add_original_csvs(data_dir: Location, target: Path) -> None:
    """``data_dir``'s CSVs into ``target`` as ``original-<name>``: linked when
    ``data_dir`` is local, copied through ``core.storage`` when it is a URI."""
    for name in _original_csvs(data_dir):
        source = storage.join(data_dir, name)
        if storage.is_uri(source):
            (target / f"original-{name}").write_text(storage.read_text(source))
        else:
            link_or_copy(Path(source), target / f"original-{name}")


def link_or_copy(source: Path, link: Path) -> None:
    """``link`` -> ``source``; a copy where a symlink cannot be made, owner-only (0600:
    ``core.redact``) as the spans of request rows it may copy are."""
    try:
        os.symlink(source.resolve(), link)
    except OSError:
        with open(source, "rb") as original, open(redact.open_private(link, os.O_WRONLY | os.O_TRUNC), "wb") as copy:
            shutil.copyfileobj(original, copy)


def retrain(settings: Settings, data_dir: Location, out=None) -> RetrainOutcome:
    """Rerun the whole pipeline on ``data_dir``; what it did."""
    from pipeline import preflight, runner

    out = out or sys.stdout
    try:
        summary = runner.run_pipeline(settings, out=out, data_dir=str(data_dir))
    except preflight.PreflightError as exc:
        return RetrainOutcome(ok=False, error=f"pre-flight: {exc}")
    return retrain_outcome(summary, data_dir)


def retrain_outcome(summary: "RunSummary", data_dir: Location) -> RetrainOutcome:
    """What a pipeline run (``pipeline.runner.RunSummary``) on ``data_dir`` did."""
    from pipeline import runner

    return RetrainOutcome(ok=summary.ok, run_id=summary.run_id, blessed=summary.blessed, pushed=summary.pushed,
                          pushed_version=summary.pushed_version, data_dir=str(data_dir), log=summary.log_path,
                          error=None if summary.ok else f"{summary.failed_node}: {summary.error}",
                          not_pushed_reason=not_pushed_reason(summary), summary_text=runner.render(summary))


def not_pushed_reason(summary: "RunSummary") -> Optional[str]:
    """Why a run that succeeded pushed nothing (None when it pushed or failed): the
    Pusher's reason (the trusted holdout refused the candidate, the model is already
    a version's) and the Evaluator's (its thresholds, the fairness gate)."""
    if summary.pushed or not summary.ok:
        return None
    reasons = [summary.not_pushed_reason] if summary.not_pushed_reason else (
        [f"model already pushed as version {summary.cached_push_version}"] if summary.cached_push_version else [])
    if summary.blessed is False:
        reasons.append("not blessed: " + ("; ".join(summary.blessing_reasons) or "the Evaluator refused it"))
    return "; ".join(reasons) or None


def repush(settings: Settings, candidate: ReuseCandidate) -> RepushOutcome:
    """Publish a previously blessed model again, atomically, as a new version; its
    push marker names the model (``model_uri``, as the pipeline's pushes do), and
    its model card (``pipeline.model_card``), when the model has one, is the card
    written when the model was built, with the new version."""
    from core.pushdir import publish_atomically

    from pipeline import model_card

    record = {"model_uri": candidate.model_uri, "model_artifact_id": candidate.model_id}
    card_id, stage = _model_card_stager(settings, candidate.model_id)
    from pipeline import domain        # the input domain it was pushed with, too (issue 16 part 4)
    stage = domain.combined(stage, domain.stager_for_model(settings, candidate.model_id))
    from pipeline import warmup        # and TF Serving's warm-up requests (issue 17 part 2)
    stage = domain.combined(stage, warmup.stager_for_model(settings, candidate.model_id))
    version = publish_atomically(candidate.model_path, str(settings.model_push_dir), record, stage=stage,
                                 integrity_key_env=settings.model_integrity_key_env)
    destination = str(storage.join(settings.model_push_dir, version))
    return RepushOutcome(ok=True, pushed=True, pushed_version=version, model_id=candidate.model_id,
                         pushed_destination=destination, model_card_id=card_id,
                         model_card=None if card_id is None else str(
                             storage.join(destination, model_card.CARD_DIR, model_card.CARD_JSON)))


def _model_card_stager(settings: Settings, model_id: int):
    """The model's ModelCard artifact id and the stager that writes the card into the
    re-pushed version; (None, None) if it has none."""
    from core import mlmd
    from pipeline import model_card

    try:
        found = model_card.artifact_for_model(mlmd.open_store(settings), model_id)
        return (None, None) if found is None else (found.id, model_card.stager(
            model_card.read(found.uri), settings.model_push_dir, {"artifact:model_card": found.id}))
    except (mlmd.MetadataError, model_card.ModelCardError) as exc:
        log.warning("the re-pushed model %s gets no model card: %s", model_id, exc)
        return None, None
