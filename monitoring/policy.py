"""The trigger policy: whether a window's findings call for an action, and which.

Reasons (each switched by a setting, see core/config.py ``# --- monitoring``):
ERROR-severity schema anomalies; N features over their skew threshold; N over
their drift threshold; prediction drift; an AUC drop on labelled requests.

Before any of that, rejected requests: when at least ``alert_rejection_rate`` of
a version's requests (and ``alert_min_rejected`` of them) were rejected by the
server, the decision is ``alert``: reported (summary line, report, MLMD), never
acted on, whatever else fired. A retrain cannot fix a client that stopped
sending a feature, and the skew of this window comes from the same broken
requests. Anomalies that the rejections explain (a feature the rejected
requests lack) are never a reason to retrain.

A window with fewer rows than ``monitor_min_rows`` is not judged (statistics too
noisy): none of its findings is a reason, nothing is flagged or triggered; the alerts
above are kept, and those on bias, attribution or probing only when no check of the
window fired (as before the window was marked not judged).

Then, in this order, a window is *not* acted on when: its model version is not the one
currently served (a newer version replaced it, or another version of the window
was acted on); this window was acted on before (a resumed run); the last action
is younger than ``cooldown_seconds``. Otherwise the action is ``repush`` when a
previously blessed model's training data matches the window
(``reuse_blessed_models``), else ``retrain``, unless ``retrain_with_feedback``
and no labelled request came back (a rerun on unchanged data trains for
nothing). A ``--dry-run`` says what it would do and does nothing. Every decision
carries its reasons in words.

Bias drift (``monitoring.bias``) is one of the reasons with ``trigger_on_bias_drift``.
Off (the default), a window whose only finding is bias drift gets an ``alert``:
reported, never acted on; with other findings, it is listed among the decision's
reasons, marked not acted on. A group whose predictions or errors moved calls for a
person: its inputs may have changed (a retrain on them learns the change), or its
labels (a retrain learns them, whether they are right or not); the fairness gate
judges any retrained model anyway.

Clients whose queries look like model extraction or membership-inference probing
(``monitoring.probing``) are never a reason to act: with ``probing_alert`` (the
default) a window whose only finding they are gets an ``alert``, and beside other
findings they are listed among the reasons, not acted on. Nor is anything else acted
on automatically while they are in the window (whatever ``probing_alert`` says): their
rows are in its skew, drift and labels, so a prober could trigger retrains on purpose
(cost harvesting, poisoning through drift). A window that would retrain or re-push is
an ``alert`` naming them instead; a person judges the clients and reruns the pipeline,
or waits for a window without them. (Judging the window without their rows would need
the statistics recomputed per client: not done.)

Feature attribution drift (``monitoring.attribution_drift``) likewise: a reason
with ``trigger_on_attribution_drift``, else (the default) an ``alert`` when it is
the window's only finding. Attributions say which features move the output on
the served rows, not whether the output is right: a retrain needs labels that
say so (the quality check), and a shift of the inputs behind it shows in the skew
and drift checks, which trigger on their own.
"""
import dataclasses
import time
from typing import Dict, List, Optional, Tuple

from core.config import Settings
from monitoring.rejections import Alert, Summary
from monitoring.reuse import ReuseCandidate

NONE, RETRAIN, REPUSH, ALERT = "none", "retrain", "repush", "alert"
ACTIONS = (RETRAIN, REPUSH)            # what changes the served model; ALERT only reports


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str                        # none | retrain | repush | alert
    triggered: bool                    # the policy's reasons hold (whatever was done)
    reasons: List[str]                 # why the policy fired
    because: str                       # why this action (or none) was taken
    dry_run: bool = False
    reuse: Optional[ReuseCandidate] = None     # the matching blessed model, for repush
    outcome: Optional[object] = None   # what the action did (``act.RetrainOutcome``/``RepushOutcome``)
    not_judged: str = ""               # why no finding counts: too few rows (``monitor_min_rows``)

    @property
    def failed(self) -> bool:
        """An action was taken and did not succeed (a retrain held for approval did not fail)."""
        return self.outcome is not None and not self.outcome.ok and not getattr(self.outcome, "held", "")

    def to_dict(self) -> Dict:
        return {"action": self.action, "triggered": self.triggered, "reasons": list(self.reasons),
                "because": self.because, "dry_run": self.dry_run,
                "reuse": self.reuse.to_dict() if self.reuse is not None else None,
                "outcome": self.outcome.to_dict() if self.outcome is not None else None, "not_judged": self.not_judged}


def reasons_for(settings: Settings, *, features, prediction: Dict, quality: Dict, bias=None,
                attribution=None) -> List[str]:
    """The findings of one version's window that call for an action, in words."""
    reasons = []
    errors = [(f.name, a["short"]) for f in features for a in f.anomalies
              if a["severity"] == "ERROR" and not a.get("explained_by")]
    if settings.trigger_on_error_anomalies and errors:
        reasons.append(f"{len(errors)} schema anomal{'y' if len(errors) == 1 else 'ies'} of ERROR "
                       f"severity: " + "; ".join(f"{n}: {s}" for n, s in errors))
    skewed = [f for f in features if f.over_skew]
    if settings.trigger_skewed_features > 0 and len(skewed) >= settings.trigger_skewed_features:
        reasons.append(f"{len(skewed)} feature(s) over their skew threshold (policy: "
                       f">= {settings.trigger_skewed_features}): "
                       + ", ".join(f"{f.name} {f.skew:.3f} > {f.skew_threshold:g}" for f in skewed))
    drifted = [f for f in features if f.over_drift]
    if settings.trigger_drifted_features > 0 and len(drifted) >= settings.trigger_drifted_features:
        reasons.append(f"{len(drifted)} feature(s) over their drift threshold vs the previous window: "
                       + ", ".join(f"{f.name} {f.drift:.3f} > {f.drift_threshold:g}" for f in drifted))
    if settings.trigger_on_prediction_drift and prediction.get("over"):
        reasons.append(f"prediction drift {prediction['distance']:.3f} > {prediction['threshold']:g} "
                       f"(served outputs vs the evaluation set's)")
    if settings.trigger_quality_drop > 0 and quality.get("over"):
        reasons.append(f"AUC {quality['auc']:.3f} on {quality['labelled_rows']} labelled requests is "
                       f"{quality['auc_drop']:.3f} below the Evaluator's {quality['evaluator_auc']:.3f} "
                       f"(policy: drop > {settings.trigger_quality_drop:g})")
    if settings.trigger_on_bias_drift and bias is not None and bias.flagged:
        reasons.append(bias_reason(bias))
    if settings.trigger_on_attribution_drift and attribution is not None and attribution.drifted:
        reasons.append(attribution.finding())
    return reasons


def bias_reason(bias) -> str:
    """A ``bias.BiasDrift``'s flagged moves, in words (the first five)."""
    findings = bias.findings()
    more = f"; and {len(findings) - 5} more" if len(findings) > 5 else ""
    return f"bias drift in {', '.join(bias.flagged_slices) or 'the gaps between slices'}: " + \
        "; ".join(findings[:5]) + more


BIAS_ALERT = ("bias drift (trigger_on_bias_drift is off): a person judges whether the group's inputs or "
              "labels changed before any retrain")
ATTRIBUTION_ALERT = ("feature attribution drift (trigger_on_attribution_drift is off): the served rows sit "
                     "where other features decide; a person judges whether the inputs or a client changed")


PROBING_ALERT = ("a client's queries look like model extraction or membership-inference probing (probing_alert): "
                 "a person judges the client (its token, its address) and its access; a retrain changes nothing")


def not_acted_on(settings: Settings, bias, attribution, probing=None) -> List[Tuple[str, str]]:
    """The flagged findings whose trigger is off, each as (finding, why it is not acted on);
    clients flagged as probing (``monitoring.probing``) are never a reason to act."""
    found = []
    if probing is not None and probing.flagged and settings.probing_alert:
        found.append((probing.finding(), PROBING_ALERT))
    if bias is not None and bias.flagged and not settings.trigger_on_bias_drift:
        found.append((bias_reason(bias), BIAS_ALERT))
    if attribution is not None and attribution.drifted and not settings.trigger_on_attribution_drift:
        found.append((attribution.finding(), ATTRIBUTION_ALERT))
    return found


def looks_for_reuse(settings: Settings, *, reasons: List[str], is_current: bool) -> bool:
    """Whether to judge the blessed models against the window (``monitoring.reuse``)."""
    return bool(reasons) and settings.reuse_blessed_models and is_current


def rejection_alert(settings: Settings, summary: Optional[Summary], scope: str = "") -> Optional[Alert]:
    """The alert the rejections call for (``scope``: which requests, when not one
    version's), or None."""
    if summary is None or settings.alert_rejection_rate <= 0 or summary.rejected < settings.alert_min_rejected \
            or summary.rate < settings.alert_rejection_rate:
        return None
    return Alert.of(summary, settings.alert_rejection_rate, settings.alert_min_rejected, scope)


def decide(settings: Settings, *, reasons: List[str], rows: int, is_current: bool,
           window_action: Optional[Dict], last_action: Optional[Dict], dry_run: bool,
           reuse: Optional[ReuseCandidate] = None, labelled_rows: int = 0, alert: Optional[Alert] = None,
           now: Optional[float] = None, bias=None, attribution=None, probing=None) -> Decision:
    """One version's decision. ``is_current``: the version is the one served now
    (and no other version of the window was acted on); ``window_action``: the action
    this window already took (a resumed run), ``last_action``: the newest action
    (checkpoint entries); ``reuse``: the best matching blessed model;
    ``labelled_rows``: the window's rows whose labels came back; ``bias``: the
    version's ``bias.BiasDrift``, ``attribution`` its attribution drift: flagged with
    their trigger off, they are among the reasons, an alert when nothing else fired; so are
    the clients ``probing`` flags (``probing_alert``)."""
    now = time.time() if now is None else now
    alerts = not_acted_on(settings, bias, attribution, probing)
    if alert is not None:
        return alert_decision(alert, reasons + [finding for finding, _ in alerts], dry_run)
    not_judged = too_few_rows(settings, rows) if rows < settings.monitor_min_rows else ""
    if reasons and not_judged:      # the window's own findings are noise: none counts, nor does an alert
        return Decision(NONE, False, [], not_judged, dry_run, not_judged=not_judged)
    if not reasons:
        if alerts:
            return Decision(ALERT, True, [finding for finding, _ in alerts],
                            "alert, not acted on: " + "; ".join(why for _, why in alerts), dry_run,
                            not_judged=not_judged)
        return Decision(NONE, False, [], not_judged or "no trigger: every check is within the policy", dry_run,
                        not_judged=not_judged)
    reasons = reasons + [f"{finding} (not acted on: its trigger is off)" for finding, _ in alerts]
    held = _held_back(settings, is_current, window_action, last_action, now)
    if held:
        return Decision(NONE, True, reasons, f"not acted on: {held}", dry_run)
    if reuse is not None:
        action, because = REPUSH, (
            f"re-push model {reuse.model_id} (blessed, trained on data that matches this window: "
            f"{reuse.why}) instead of training a new one")
    elif settings.retrain_with_feedback and not labelled_rows:
        return Decision(NONE, True, reasons, "not acted on: no labelled requests in this window to add as a "
                        "data span (retrain_with_feedback); a rerun on unchanged data would train for nothing",
                        dry_run)
    else:
        action, because = RETRAIN, "rerun the pipeline" + (
            " (no previously blessed model matches this window)" if settings.reuse_blessed_models else "")
    if probing is not None and probing.flagged:
        return Decision(ALERT, True, reasons, probing_hold(probing, because), dry_run)
    if dry_run:
        return Decision(NONE, True, reasons, f"dry run: would {because}", True, reuse)
    return Decision(action, True, reasons, because, False, reuse)


def too_few_rows(settings: Settings, rows: int) -> str:
    """Why a window under ``monitor_min_rows`` is not judged: its statistics are too
    noisy for a flagged feature to mean anything."""
    return f"too few rows to judge ({rows} < monitor_min_rows={settings.monitor_min_rows})"


def probing_hold(probing, because: str) -> str:
    """Why a window with clients flagged as probing is not acted on: their rows are in
    the window's skew, drift and labels, so a retrain or re-push could be theirs to
    trigger (cost harvesting, poisoning through drift)."""
    clients = ", ".join(c.client for c in probing.flagged)
    return (f"alert, not acted on: clients flagged as probing ({clients}) sent rows in this window, so its "
            f"skew or drift may be theirs; the policy would {because}: judge the clients, then rerun the "
            f"pipeline (`tfxops run`) yourself or wait for a window without them")


def with_outcome(decision: Decision, outcome, window_id: str) -> Decision:
    """The decision with what its action did. A retrain the poisoning guard held
    (``monitoring.poisoning``) is an alert: its ``because`` says why it waits and how to
    release it, the window exits 0, and nothing is trained until a person approves."""
    held = getattr(outcome, "held", "")
    because = decision.because if not held else (
        f"ALERT: {held}; release the span with `tfxops approve {window_id}`, discard it with "
        f"`tfxops approve --reject {window_id}` (the policy would {decision.because})")
    if not held and getattr(outcome, "not_pushed_reason", None):     # retrained; the gates kept the served model
        because = f"{because}; nothing pushed: {outcome.not_pushed_reason}"
    return dataclasses.replace(decision, outcome=outcome, because=because)


def _held_back(settings: Settings, is_current: bool, window_action: Optional[Dict],
               last_action: Optional[Dict], now: float) -> str:
    """Why a triggered window is not acted on ("" if nothing holds it back)."""
    if not is_current:
        return "a newer model version is served now"
    if window_action is not None:
        return (f"this window was already acted on ({window_action['action']} at "
                f"{_when(window_action['time'])}); a window never triggers twice")
    if last_action is not None and now - last_action["time"] < settings.cooldown_seconds:
        remaining = settings.cooldown_seconds - (now - last_action["time"])
        return (f"cool-down, the last action ({last_action['action']} for window {last_action['window']}) "
                f"was at {_when(last_action['time'])}; {remaining:.0f} s of "
                f"cooldown_seconds={settings.cooldown_seconds:g} left")
    return ""


def alert_decision(alert: Alert, reasons: List[str], dry_run: bool) -> Decision:
    """Rejected requests over the alert threshold: reported, never acted on."""
    return Decision(ALERT, True, [alert.reason()] + reasons, (
        f"alert, not acted on: {alert.finding()}; a retrain cannot fix a client that stopped sending "
        f"a feature (or sends what the server refuses): fix the client, or the signature it calls"
        + ("; the window's other findings include the rows of those requests" if reasons else "")),
        dry_run)


def window_decision(settings: Settings, *, versions: List[Tuple[Decision, bool]],
                    unattributed: Optional[Summary], any_not_judged: bool, dry_run: bool) -> Decision:
    """The window's decision from its versions' (``(decision, is_current)``, in order):
    the action taken (or alert), else the alert on requests refused before a version
    was chosen, else the current version's."""
    main = next((d for d, _ in versions if d.action != NONE), None) or \
        next((d for d, current in versions if current), None) or (versions[0][0] if versions else None)
    if main is not None and main.action != NONE:
        return main
    alert = rejection_alert(settings, unattributed, scope="before any model version was chosen")
    if alert is not None:
        return alert_decision(alert, [], dry_run)
    if main is not None:
        return main
    return Decision(NONE, False, [], "no version in the window could be judged (no lineage in MLMD)"
                    if any_not_judged else "every log file in the window was unreadable", dry_run)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
