"""The report's words: why each feature is or is not flagged, the verdict of a served
version's window (N of M features skewed or drifted), and what the decision's
action did. Everything is read from the window's result (its JSON) and the policy
settings it was judged with; nothing here judges anew."""
import dataclasses
from typing import Dict, List, Optional

from monitoring.report_bins import is_time

POLICY_KEYS = ("monitor_min_rows", "monitor_min_labelled", "prediction_drift_threshold",
               "trigger_on_error_anomalies", "trigger_skewed_features", "trigger_drifted_features",
               "trigger_on_prediction_drift", "trigger_quality_drop")
FLAGGED, NOTED, OK, UNWATCHED, NOT_COMPUTED, FEW = "flagged", "noted", "ok", "unwatched", "not computed", "few"


def policy_of(settings) -> Dict:
    """The settings a window is judged with, as the report records them."""
    return {key: getattr(settings, key) for key in POLICY_KEYS}


def too_few_rows(rows: int, policy: Dict) -> bool:
    """Below ``monitor_min_rows``: the policy never acts (``policy.decide``) and the
    report judges nothing."""
    return policy.get("monitor_min_rows") is not None and rows < policy["monitor_min_rows"]


@dataclasses.dataclass
class Verdict:
    state: str                   # FLAGGED | NOTED | OK | UNWATCHED | NOT_COMPUTED | FEW
    reasons: List[str]


def feature_verdict(f: Dict, policy: Dict, rows: int, counts: Dict[str, Optional[int]]) -> Verdict:
    """Why one feature is or is not flagged. ``counts``: rows with a value in the
    training split and in the window (None when unknown)."""
    if too_few_rows(rows, policy):
        return Verdict(FEW, [f"too few rows to judge: {rows} row{'s' if rows != 1 else ''} in this window, fewer "
                             f"than monitor_min_rows={policy['monitor_min_rows']}; shown in grey, never flagged"])
    reasons = _anomaly_reasons(f, policy) + [_skew_reason(f, policy, counts)]
    drift = _drift_reason(f, policy)
    if drift:
        reasons.append(drift)
    triggered = any(r.startswith("flagged") for r in reasons)
    if triggered:
        return Verdict(FLAGGED, reasons)
    if any(r.startswith("over") or r.startswith("anomaly") for r in reasons):
        return Verdict(NOTED, reasons)
    if f.get("skew") is None:
        return Verdict(NOT_COMPUTED, reasons)
    return Verdict(UNWATCHED if f.get("skew_threshold") is None else OK, reasons)


def _anomaly_reasons(f: Dict, policy: Dict) -> List[str]:
    out = []
    for a in f.get("anomalies") or []:
        text = f"{a['short']}: {a['description']}"
        if a.get("explained_by"):
            out.append(f"anomaly explained by the rejected requests, never a reason to retrain: {text}")
        elif a["severity"] == "ERROR" and policy.get("trigger_on_error_anomalies", True):
            out.append(f"flagged: schema anomaly of ERROR severity: {text}")
        else:
            why = "" if a["severity"] == "ERROR" else f" ({a['severity']} severity, not a trigger)"
            out.append(f"anomaly{why or ' (trigger_on_error_anomalies is off)'}: {text}")
    return out


def _skew_reason(f: Dict, policy: Dict, counts: Dict[str, Optional[int]]) -> str:
    skew, threshold = f.get("skew"), f.get("skew_threshold")
    if skew is None:
        return _why_no_distance(f, counts)
    if threshold is None:
        text = (f"not watched: the schema sets no skew threshold for {f['name']} (distance {skew:.3f} shown, "
                f"never alarms)")
        if is_time(f["name"]):
            text += "; a time column: served trips are later than the training data, so it differs by design"
        return text
    if skew <= threshold:
        return f"within its threshold: skew {skew:.3f} ≤ {threshold:g}"
    need = policy.get("trigger_skewed_features", 1)
    if not need:
        return f"over its threshold ({skew:.3f} > {threshold:g}); not a trigger: trigger_skewed_features=0"
    return (f"flagged: skew {skew:.3f} > {threshold:g} (schema skew_comparator); the policy acts from "
            f"{need} skewed feature{'s' if need != 1 else ''} (trigger_skewed_features={need})")


def _why_no_distance(f: Dict, counts: Dict[str, Optional[int]]) -> str:
    training, serving = counts.get("training"), counts.get("serving")
    if training == 0 and serving == 0:
        return (f"skew not computed: {f['name']} has no values in the training split nor in this window "
                f"(an empty column: nothing to compare)")
    if training == 0:
        return f"skew not computed: no values in the training split ({f['name']} is empty there)"
    if serving == 0:
        return f"skew not computed: no values in this window (the clients did not send {f['name']})"
    if not f.get("serving_present", True):
        return "skew not computed: the feature is not in this window's requests"
    return "skew not computed: TFDV gave no distance for it"


def _drift_reason(f: Dict, policy: Dict) -> str:
    drift, threshold = f.get("drift"), f.get("drift_threshold")
    if drift is None or threshold is None or drift <= threshold:
        return ""
    need = policy.get("trigger_drifted_features", 0)
    if not need:
        return (f"over its drift threshold vs the previous window ({drift:.3f} > {threshold:g}); not a trigger: "
                f"trigger_drifted_features=0")
    return f"flagged: drift {drift:.3f} > {threshold:g} vs the previous window (trigger_drifted_features={need})"


# ------------------------------------------------------------------ the version's verdict
def version_findings(group: Dict, policy: Dict) -> List[str]:
    """The verdict's lines: features over their skew/drift thresholds out of those
    measured, anomalies, prediction drift, quality."""
    features = group.get("features") or []
    if too_few_rows(group.get("rows", 0), policy):
        return [f"too few rows to judge: {group.get('rows', 0)} rows, fewer than monitor_min_rows="
                f"{policy['monitor_min_rows']}: no feature, prediction or quality figure is judged"]
    measured = [f for f in features if f.get("skew") is not None]
    skewed = [f["name"] for f in measured if f.get("over_skew")]
    out = [_share_line(len(skewed), len(measured), "skewed vs training", skewed)]
    drift_measured = [f for f in features if f.get("drift") is not None]
    if drift_measured:
        drifted = [f["name"] for f in drift_measured if f.get("over_drift")]
        out.append(_share_line(len(drifted), len(drift_measured), "drifted vs the previous window", drifted))
    anomalous = [f["name"] for f in features if f.get("anomalies")]
    if anomalous:
        out.append(f"schema anomalies in {len(anomalous)} feature(s): {', '.join(anomalous)}")
    out.append(prediction_line(group.get("prediction") or {}, policy))
    out.append(quality_line(group.get("quality") or {}))
    return out


def _share_line(n: int, m: int, what: str, names: List[str]) -> str:
    share = f" ({n / m:.0%})" if m else ""
    return f"{n} of {m} measured features{share} {what}" + (f": {', '.join(names)}" if names else "")


def prediction_line(prediction: Dict, policy: Dict) -> str:
    if not prediction.get("available"):
        return f"prediction drift not measured: {prediction.get('reason', 'no predictions')}"
    over = "over" if prediction.get("over") else "within"
    trigger = "" if policy.get("trigger_on_prediction_drift", True) else " (not a trigger: trigger_on_prediction_drift off)"
    return (f"prediction drift {prediction['distance']:.3f}, {over} its threshold {prediction['threshold']:g} "
            f"(served outputs vs the evaluation set's){trigger}")


def quality_line(quality: Dict) -> str:
    if quality.get("auc") is None:
        return f"quality not measured: {quality.get('reason') or 'no labels came back'}"
    base = quality.get("evaluator_auc")
    text = f"AUC {quality['auc']:.3f} on {quality.get('labelled_rows', 0)} labelled rows"
    if base is not None:
        text += f" vs the Evaluator's {base:.3f}" + (" — a drop over the policy's bound" if quality.get("over") else "")
    return text + (f" ({quality['reason']})" if quality.get("reason") else "")


# ------------------------------------------------------------------ the action's outcome
def outcome_lines(outcome: Optional[Dict]) -> List[str]:
    """What the retrain or re-push did, in sentences."""
    if not outcome:
        return []
    if "model_id" in outcome:       # a re-push
        return [f"re-pushed model #{outcome['model_id']} as version {outcome.get('pushed_version')} to "
                f"{outcome.get('pushed_destination')}" + ("" if outcome.get("ok") else ": FAILED")]
    lines = []
    if outcome.get("span"):
        lines.append(f"new data span: {outcome.get('span_rows', 0)} labelled rows in {outcome['span']}")
    if outcome.get("held"):
        lines.append(f"retrain held for approval: {outcome['held']}")
    elif outcome.get("run_id") is None:
        lines.append(f"the pipeline did not start: {outcome.get('error')}")
    else:
        state = "succeeded" if outcome.get("ok") else "failed"
        lines.append(f"pipeline run {outcome['run_id']} {state}; blessed: "
                     f"{'yes' if outcome.get('blessed') else 'no'}; pushed: "
                     + (f"version {outcome.get('pushed_version')}" if outcome.get("pushed") else "nothing"))
        if outcome.get("not_pushed_reason"):
            lines.append(f"why nothing was pushed: {outcome['not_pushed_reason']}")
        if outcome.get("error"):
            lines.append(f"error: {outcome['error']}")
        if outcome.get("log"):
            lines.append(f"log: {outcome['log']}")
    return lines
