"""Actions: a new data span from labelled requests, a pipeline rerun, a re-push.
``carry_out`` does what a ``policy.Decision`` says and returns what happened.

Spans and the retraining data directory live under ``<monitor_dir>`` (never in
the repository's data/):

    <monitor_dir>/spans/span-<window>.csv     labelled requests of one window,
                                              CsvExampleGen's columns
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
from typing import Dict, List, Optional, Union

from core import audit
from core import features as F
from core import storage
from core.storage import Location
from core.config import Settings
from monitoring import policy
from monitoring.reuse import ReuseCandidate

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

    def to_dict(self) -> Dict:
        if self.run_id is None:
            out = {"ok": self.ok, "error": self.error}
        else:
            out = {"ok": self.ok, "run_id": self.run_id, "blessed": self.blessed, "pushed": self.pushed,
                   "pushed_version": self.pushed_version, "data_dir": self.data_dir, "log": self.log}
            if not self.ok:
                out["error"] = self.error
        out.update(span=self.span, span_rows=self.span_rows)
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
    outcome = _carry_out(settings, decision, monitor_dir, window_id, labelled_rows)
    _audit_outcome(settings, window_id, served, outcome)
    return outcome


def _audit_outcome(settings: Settings, window_id: str, served, outcome: Outcome) -> None:
    """The retrain or re-push of a window in the audit trail, with what came of it."""
    replaced = f"window {window_id}, served version {served}"
    if isinstance(outcome, RepushOutcome):
        audit.record(settings, audit.REPUSH,
                     f"{replaced}: blessed model {outcome.model_id} re-pushed as version {outcome.pushed_version}",
                     {"model_artifact_id": outcome.model_id}, model_version=outcome.pushed_version,
                     actor=audit.actor_name("monitor"))
        return
    result = (f"run {outcome.run_id}: " + ("blessed" if outcome.blessed else "not blessed")
              + (f", pushed version {outcome.pushed_version}" if outcome.pushed else ", nothing pushed")
              if outcome.ok else f"failed: {outcome.error}")
    audit.record(settings, audit.RETRAIN, f"{replaced}: retrained on {outcome.data_dir or settings.data_dir}: {result}",
                 model_version=outcome.pushed_version, actor=audit.actor_name("monitor"))


def _carry_out(settings: Settings, decision: policy.Decision, monitor_dir: Path, window_id: str,
               labelled_rows: List[Dict]) -> Outcome:
    if decision.action == policy.REPUSH:
        return repush(settings, decision.reuse)
    span, data_dir = None, settings.data_dir
    if settings.retrain_with_feedback:
        span = write_span(labelled_rows, monitor_dir / "spans", window_id)
        try:
            data_dir = retrain_data_dir(settings, monitor_dir)
        except OSError as exc:
            return RetrainOutcome(
                ok=False, span=str(span) if span else None, span_rows=len(labelled_rows),
                error=f"cannot read the original CSVs in data_dir {settings.data_dir} ({exc}): set data_dir to "
                      f"the training data, or retrain_include_original=false to retrain on the spans only")
    outcome = retrain(settings, data_dir)
    outcome.span, outcome.span_rows = (str(span) if span else None), len(labelled_rows)
    return outcome


def write_span(rows: List[Dict], spans_dir: Path, window_id: str) -> Optional[Path]:
    """Labelled rows (dicts of raw values, ``tips`` included) as a CSV span."""
    if not rows:
        return None
    spans_dir.mkdir(parents=True, exist_ok=True)
    path = spans_dir / f"span-{window_id}.csv"
    tmp = spans_dir / f".{path.name}.tmp"
    with open(tmp, "w", newline="") as handle:
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
        _link_or_copy(span, target / span.name)
    return target


def _add_original_csvs(data_dir: Location, target: Path) -> None:
    """``data_dir``'s CSVs into ``target`` as ``original-<name>``: linked when
    ``data_dir`` is local, copied through ``core.storage`` when it is a URI."""
    for name in sorted(n for n in storage.listdir(data_dir) if n.endswith(".csv")):
        source = storage.join(data_dir, name)
        if storage.is_uri(source):
            (target / f"original-{name}").write_text(storage.read_text(source))
        else:
            _link_or_copy(Path(source), target / f"original-{name}")


def _link_or_copy(source: Path, link: Path) -> None:
    try:
        os.symlink(source.resolve(), link)
    except OSError:
        shutil.copyfile(source, link)


def retrain(settings: Settings, data_dir: Location, out=None) -> RetrainOutcome:
    """Rerun the whole pipeline on ``data_dir``; what it did."""
    from pipeline import preflight, runner

    out = out or sys.stdout
    try:
        summary = runner.run_pipeline(settings, out=out, data_dir=str(data_dir))
    except preflight.PreflightError as exc:
        return RetrainOutcome(ok=False, error=f"pre-flight: {exc}")
    return RetrainOutcome(ok=summary.ok, run_id=summary.run_id, blessed=summary.blessed, pushed=summary.pushed,
                          pushed_version=summary.pushed_version, data_dir=str(data_dir), log=summary.log_path,
                          error=None if summary.ok else f"{summary.failed_node}: {summary.error}")


def repush(settings: Settings, candidate: ReuseCandidate) -> RepushOutcome:
    """Publish a previously blessed model again, atomically, as a new version; its
    push marker names the model (``model_uri``, as the pipeline's pushes do), and
    its model card (``pipeline.model_card``), when the model has one, is the card
    written when the model was built, with the new version."""
    from core.pushdir import publish_atomically

    from pipeline import model_card

    record = {"model_uri": candidate.model_uri, "model_artifact_id": candidate.model_id}
    card_id, stage = _model_card_stager(settings, candidate.model_id)
    version = publish_atomically(candidate.model_path, str(settings.model_push_dir), record, stage=stage)
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
