"""The run's JSON result and a self-contained HTML report (inline SVG and CSS, no
scripts, no external files): the verdict and decision first, then per served version
the features (why each is or is not flagged, a test chosen by sample size), charts on
readable bins with each side's figures, anomalies, prediction drift and quality.
``write`` also refreshes the index over every window (``monitoring.report_index``);
``regenerate`` rewrites every window's page and the index from their saved JSON
results and statistics files (``tfxops monitor report``)."""
import html
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from monitoring import agreement, out_of_domain
from monitoring import probing, redacted
from monitoring import poisoning
from monitoring import report_bins, report_charts, report_features, report_index, report_verdict as verdict_lib
from monitoring.report_charts import SERVE_COLOR, TRAIN_COLOR

log = logging.getLogger("tfxops.monitoring")


# ------------------------------------------------------------------ distributions
def distribution(training_feature, serving_feature) -> Optional[Dict]:
    """Both sides' share per readable bin (``monitoring.report_bins``): round value bins
    for numbers, dates for timestamps, 0-1 for probabilities, top values and "other"
    for strings."""
    return report_bins.distribution(training_feature, serving_feature)


# ------------------------------------------------------------------ JSON
def json_safe(value):
    """``value`` with numpy numbers as Python's and NaN/infinity as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating,)):
        return json_safe(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def write(result, settings=None) -> None:
    """A pass's ``result.MonitorResult`` as its JSON and HTML report files (``result.report``),
    with the policy settings it was judged with; then the index over every window."""
    document = result.to_dict()
    if settings is not None:
        document["policy"] = verdict_lib.policy_of(settings)
    _write_atomically(Path(result.report.json), json.dumps(json_safe(document), indent=2))
    home = Path(settings.home) if settings is not None else None
    _write_atomically(Path(result.report.html), render_html(document, home=home))
    reports = Path(result.report.html).parent
    write_index(reports.parent, document.get("policy") or {})


def write_index(monitor_dir: Path, policy: Dict) -> Path:
    """``<monitor_dir>/index.html`` over every window's JSON result in ``reports/``."""
    documents = report_index.read_results(monitor_dir / "reports")
    path = monitor_dir / "index.html"
    _write_atomically(path, report_index.render(documents, policy, CSS))
    return path


def regenerate(settings) -> Path:
    """Every window's page again from its saved JSON result and statistics files (the
    settings' policy where a result did not record its own), then the index; the
    index's path. ``FileNotFoundError`` when the home has no monitoring reports."""
    monitor_dir = Path(settings.monitor_path)
    reports = monitor_dir / "reports"
    documents = report_index.read_results(reports)
    if not documents:
        raise FileNotFoundError(f"no monitoring reports in {reports}: run `tfxops monitor --home {settings.home}` "
                                f"after the server has logged requests")
    policy = verdict_lib.policy_of(settings)
    for path, document in documents:
        document.setdefault("policy", policy)
        _write_atomically(path.with_suffix(".html"), render_html(document, home=Path(settings.home)))
    return write_index(monitor_dir, policy)


def _write_atomically(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary file of its own in the same directory
    (the monitor and ``tfxops monitor report`` may write the same page at once)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)        # readable as the pages were before
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ------------------------------------------------------------------ HTML
CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1320px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.box{padding:12px 16px;border-radius:6px;margin:12px 0}
.ok{background:#e8f5e9;border:1px solid #a5d6a7}.warn{background:#fff8e1;border:1px solid #ffe082}
.act{background:#ffebee;border:1px solid #ef9a9a}.idle{background:#eceff1;border:1px solid #cfd8dc}
table{border-collapse:collapse;margin:6px 0}
td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#fafafa}.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#c62828;font-weight:600}.note{color:#8d6e00;font-weight:600}.fine{color:#2e7d32}.quiet{color:#78909c}
.pill{display:inline-block;padding:0 8px;border-radius:9px;font-size:12px;white-space:nowrap;background:#f5f5f5}
.pill.bad{background:#ffebee}.pill.note{background:#fff8e1}.pill.fine{background:#e8f5e9}
td.why{font-size:12px;max-width:420px}.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #e0e0e0;border-radius:6px;padding:8px;width:430px;box-sizing:border-box}
.summary td,.summary th{font-size:12px;padding:2px 6px}.verdict{font-size:15px}
.legend span,.legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
.legend span.muted{width:auto;height:auto}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render_html(result: Dict, home: Optional[Path] = None) -> str:
    """The window's page from its JSON result (``home``: where to find the statistics
    files it names when they are relative to another directory)."""
    policy = result.get("policy") or {}
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>tfxops monitor "
           f"{_e(result.get('window'))}</title><style>{CSS}</style></head><body>",
           "<div class='muted'><a href='../index.html'>all windows</a></div>",
           f"<h1>Monitoring report: window {_e(result.get('window'))}</h1>",
           f"<div class='muted'>{_e(result.get('finished'))} · {result.get('rows', 0)} rows in "
           f"{result.get('requests', 0)} requests from {len(result.get('files', []))} log file(s)"
           f"{' · resumed after a crash' if result.get('resumed') else ''}"
           f"{' · dry run' if result.get('dry_run') else ''}</div>", _decision_html(result, policy)]
    out.append(poisoning.held_html((result.get("decision") or {}).get("outcome"), str(result.get("window"))))
    out.append(_files_html(result))
    for item in result.get("not_judged") or []:
        out.append(f"<div class='box warn'><b>Model {_e(item['model_name'])} version {_e(item['version'])}: "
                   f"no lineage: not judged</b> ({item['rows']} rows, {item['requests']} requests; the window "
                   f"was analysed for the other versions and committed)<br>{_e(item['reason'])}</div>")
    if result.get("unattributed_rejections"):
        out.append("<h2>Rejected before a model version was chosen</h2>"
                   + _rejections_html(result["unattributed_rejections"]))
    for group in result.get("versions", []):
        out.append(_version_html(group, policy, home))
    out.append(agreement.report_section(result.get("agreement")))     # production vs candidate (issue 17 part 4)
    out.append(_method_note(policy))
    out.append("</body></html>")
    return "".join(out)


def _decision_html(result: Dict, policy: Dict) -> str:
    """The verdict box: the decision and why, in words, each version's findings, and
    what the action did."""
    decision = result.get("decision") or {}
    action = decision.get("action", "none")
    groups = result.get("versions") or []
    few = bool(groups) and all(verdict_lib.too_few_rows(g.get("rows", 0), policy) for g in groups)
    cls = "act" if action != "none" else ("idle" if few else "warn" if decision.get("triggered") else "ok")
    out = [f"<div class='box {cls} verdict' id='verdict'><b>Decision: {_e(action.upper())}</b> — "
           f"{_e(decision.get('because', ''))}"]
    if few:
        out.append(f"<div><b>Too few rows to judge</b>: {result.get('rows', 0)} row(s) in this window, fewer than "
                   f"monitor_min_rows={policy['monitor_min_rows']}; nothing below is flagged or acted on.</div>")
    for group in groups:
        head = f"Model {group.get('model_name')} version {group.get('version')}" if len(groups) > 1 else "Findings"
        out.append(f"<div><b>{_e(head)}</b>:<ul>" + "".join(
            f"<li>{_e(line)}</li>" for line in verdict_lib.version_findings(group, policy)) + "</ul></div>")
    if decision.get("reasons"):
        heading = "What the policy saw (not judged: too few rows)" if few else "The policy's reasons"
        out.append(f"<div><b>{heading}</b>:<ul>" + "".join(
            f"<li>{_e(r)}</li>" for r in decision["reasons"]) + "</ul></div>")
    lines = verdict_lib.outcome_lines(decision.get("outcome"))
    if lines:
        out.append("<div><b>What the action did</b>:<ul>" + "".join(f"<li>{_e(x)}</li>" for x in lines)
                   + "</ul></div>")
    out.append("</div>")
    return "".join(out)


def _method_note(policy: Dict) -> str:
    from monitoring.report_statistics import TEST_MAX_ROWS

    return ("<p class='muted'>Skew: L-infinity distance (strings, TFDV) or Jensen-Shannon divergence over the "
            "training quantile bins (numbers), serving vs the training split of the model's own data; "
            "thresholds from the schema's skew/drift comparators; – = the schema sets none (shown, never "
            "alarms). Drift: vs the previous window. Charts: each side's share of its values on round value "
            "bins (dates for timestamps, 0–1 for probabilities, the top values and \"other\" for strings), "
            "read from TFDV's histograms. Statistic by sample size: when the smaller sample has at most "
            f"{TEST_MAX_ROWS:,} rows, a Kolmogorov-Smirnov (numbers) or chi-squared (strings, small integer "
            "categories) test with its p-value, else the distance (as Evidently chooses); it informs, the "
            "thresholds decide." + (f" Windows under monitor_min_rows={policy['monitor_min_rows']} rows are "
                                    "not judged." if policy.get("monitor_min_rows") is not None else "")
            + "</p>")


def _files_html(result: Dict) -> str:
    out = []
    if result.get("incomplete_files"):
        out.append("<div class='box warn'><b>Incomplete log files</b> (incomplete: still being written; not "
                   "counted, read again by the next run):<ul>" + "".join(
                       f"<li><code>{_e(f['file'])}</code>: {_e(f['error'])}</li>" for f in result["incomplete_files"])
                   + "</ul></div>")
    if result.get("quarantined_files"):
        out.append("<div class='box act'><b>Quarantined log files</b> (corrupt: never read again; the rest "
                   "was analysed):<ul>" + "".join(
                       f"<li><code>{_e(f['file'])}</code>: {_e(f['error'])}; "
                       + (f"moved to <code>{_e(f['moved_to'])}</code>" if f.get("moved_to")
                          else "dry run: left in place, the next run quarantines it" if result.get("dry_run")
                          else "left in place, marked quarantined in state.json") + "</li>"
                       for f in result["quarantined_files"]) + "</ul></div>")
    return "".join(out)


def _rejections_html(rej: Dict) -> str:
    """Rejected requests: the rate, the causes, the features the clients did not send."""
    span = f" · from {_e(rej['first'])} to {_e(rej['last'])}" if rej["first"] else ""
    out = [f"<div class='box {'act' if rej['rejected'] else 'ok'}'><b>{_e(rej['line'])}</b>{span}"
           f" · rows read from them: {rej['rows']} (requests with readable rows: {rej['with_rows']})</div>"]
    if rej["missing_features"]:
        out.append("<table><tr><th>feature (SERVING)</th><th class='num'>rejected requests lacking it</th>"
                   "<th class='num'>share</th><th class='num'>training examples without it</th><th>since</th>"
                   "</tr>" + "".join(
                       f"<tr><td class='bad'>{_e(m['feature'])}</td><td class='num'>{m['requests']}</td>"
                       f"<td class='num'>{_pct(m['fraction'])}</td><td class='num'>{_pct(m['training_fraction'])}"
                       f"</td><td>{_e(m['since'])}</td></tr>"
                       for m in rej["missing_features"]) + "</table>")
    if rej["causes"]:
        out.append("<table><tr><th>code</th><th>message (variable parts as {…}, N)</th><th class='num'>requests"
                   "</th><th class='num'>share</th><th>first</th><th>example</th></tr>" + "".join(
                       f"<tr><td>{_e(c['code'])}</td><td>{_e(c['pattern'])}</td><td class='num'>{c['requests']}</td>"
                       f"<td class='num'>{_pct(c['fraction'])}</td><td>{_e(c['first'])}</td>"
                       f"<td><code>{_e(c['example'])}</code></td></tr>" for c in rej["causes"]) + "</table>")
    return "".join(out)


def _pct(x: float) -> str:
    from monitoring.rejections import percent
    return percent(x)


def _version_html(group: Dict, policy: Dict, home: Optional[Path]) -> str:
    """One served version: its rejections and contract, features, predictions and
    quality, the blessed models judged against it, the distributions."""
    base = group.get("baseline") or {}
    out = [f"<h2>Model {_e(group.get('model_name'))} version {_e(group.get('version'))}"
           f"{'' if group.get('current', True) else ' (no longer served)'}</h2>",
           f"<div class='muted'>{group.get('rows', 0)} rows · Model artifact {_e(base.get('model_id'))} · "
           f"training statistics <code>{_e(base.get('statistics'))}</code></div>"]
    if group.get("error"):
        out.append(f"<div class='box act'>{_e(group['error'])}</div>")
        return "".join(out)
    if (group.get("rejections") or {}).get("rejected"):
        out.append("<h3>Rejected requests</h3>" + _rejections_html(group["rejections"]))
    if group.get("relaxed"):
        out.append("<h3>SERVING contract: what the served signatures take</h3><div class='muted'>Presence "
                   "required only in the rows of the signatures that take the feature:</div><ul>"
                   + "".join(f"<li>{_e(r['line'])}</li>" for r in group["relaxed"]) + "</ul>")
    views = report_features.feature_views(group, policy, home)
    out += [report_features.table_html(views), report_features.cards_html(views, group.get("prediction")),
            _prediction_quality_html(group, policy), _bias_html(group.get("bias")),
            _attribution_html(group.get("attribution")), out_of_domain.render_html(group.get("out_of_domain")),
            probing.render_html(group.get("probing")), redacted.render_html(group.get("redaction")),
            _reuse_html(group)]
    return "".join(out)


def _prediction_quality_html(group: Dict, policy: Dict) -> str:
    pred = group.get("prediction") or {}
    quality = group.get("quality") or {}
    few = verdict_lib.too_few_rows(group.get("rows", 0), policy)
    out = ["<h3>Predictions and quality</h3><table>"]
    if pred.get("available"):
        state = ("<span class='pill quiet'>too few rows to judge</span>" if few else
                 " <b class=bad>over</b>" if pred.get("over") else " within")
        out.append(f"<tr><td>prediction drift (Jensen-Shannon, served vs evaluation set)</td><td class='num'>"
                   f"{report_charts.meter(pred.get('distance'), pred.get('threshold'), muted=few)} "
                   f"{_fmt(pred.get('distance'))}</td><td>threshold {_fmt(pred.get('threshold'), 2)} {state}</td></tr>")
    else:
        out.append(f"<tr><td>prediction drift</td><td colspan=2 class='muted'>{_e(pred.get('reason', 'n/a'))}</td></tr>")
    out.append(f"<tr><td>labelled requests</td><td class='num'>{quality.get('labelled_rows', 0)}</td>"
               f"<td class='muted'>{_e(quality.get('reason', ''))}</td></tr>")
    if quality.get("auc") is not None or quality.get("accuracy") is not None:
        out.append(f"<tr><td>AUC: window vs Evaluator</td><td class='num'>{_fmt(quality.get('auc'))}</td>"
                   f"<td>{_fmt(quality.get('evaluator_auc'))}{' <b class=bad>drop</b>' if quality.get('over') else ''}</td></tr>"
                   f"<tr><td>accuracy: window vs Evaluator</td><td class='num'>{_fmt(quality.get('accuracy'))}</td>"
                   f"<td>{_fmt(quality.get('evaluator_accuracy'))}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _bias_html(bias: Optional[Dict]) -> str:
    """Bias drift: each sensitive slice's figures, window / Evaluator (z), and the gaps between slices."""
    if not bias:
        return ""
    out = [f"<h3>Bias drift: sensitive slices vs the Evaluator</h3><div class='muted'>positive: score above "
           f"{bias['threshold']:g} (the served model's Evaluator's); judged with &ge; {bias['min_rows']} rows "
           f"on both sides; flagged: moved past "
           f"its bound and |z| past the two-sided {bias['significance']:g} level. {_e(bias['reason'])}</div>"]
    if bias["slices"]:
        metrics = [m for m in ("positive_rate", "accuracy", "false_positive_rate", "false_negative_rate", "auc")
                   if any(c["metric"] == m for s in bias["slices"] for c in s["comparisons"])]
        judged = [item for item in bias["slices"] if item["rows"] >= bias["min_rows"]]
        small = [item for item in bias["slices"] if item["rows"] < bias["min_rows"]]
        out.append(_bias_table(judged, metrics))
        if small:
            out.append(f"<details><summary>{len(small)} more slice(s) with fewer than {bias['min_rows']} rows "
                       f"(shown, not judged)</summary>{_bias_table(small, metrics)}</details>")
    if bias["gaps"]:
        out.append("<table><tr><th>feature</th><th>metric</th><th>gap in the window</th><th>gap at evaluation"
                   "</th><th class='num'>change</th><th class='num'>z</th></tr>" + "".join(
                       f"<tr><td{' class=bad' if g['flagged'] else ''}>{_e(g['feature'])}</td>"
                       f"<td>{_e(g['metric'].replace('_', ' '))}</td><td>{_fmt(g['window_gap'])} "
                       f"({_e(' vs '.join(g['between']))})</td><td>{_fmt(g['evaluation_gap'])} "
                       f"({_e(' vs '.join(g['between']))})</td><td class='num'>{g['change']:+.3f}</td>"
                       f"<td class='num'>{_fmt(g['z'], 1)}</td></tr>" for g in bias["gaps"]) + "</table>")
    return "".join(out)


def _bias_table(slices: List[Dict], metrics: List[str]) -> str:
    out = ["<table><tr><th>slice</th><th class='num'>rows</th><th class='num'>labelled</th>"
           "<th class='num'>evaluation examples</th>" + "".join(
               f"<th>{_e(m.replace('_', ' '))}: window / Evaluator (z)</th>" for m in metrics) + "</tr>"]
    for item in slices:
        cells = {c["metric"]: c for c in item["comparisons"]}
        out.append(f"<tr><td{' class=bad' if any(c['flagged'] for c in cells.values()) else ''}>"
                   f"{_e(item['feature'])}={_e(item['value'])}</td><td class='num'>{item['rows']}</td>"
                   f"<td class='num'>{item['labelled']}</td><td class='num'>"
                   f"{_e(item['evaluation_examples'] if item['evaluation_examples'] is not None else '–')}</td>"
                   + "".join(_bias_cell(cells.get(m)) for m in metrics) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _bias_cell(comparison: Optional[Dict]) -> str:
    if comparison is None:
        return "<td></td>"
    z = "" if comparison["z"] is None else f" ({comparison['z']:+.1f})"
    note = f"<br><span class='muted'>{_e(comparison['note'])}</span>" if comparison["note"] else ""
    return (f"<td{' class=bad' if comparison['flagged'] else ''}>{_fmt(comparison['window'])} / "
            f"{_fmt(comparison['evaluation'])}{z}{note}</td>")


def _attribution_html(drift: Optional[Dict]) -> str:
    """Feature attribution drift: the NDCG against its threshold, then every feature's
    share of the attributions at push and in the window, the top movers first."""
    if not drift:
        return ""
    out = ["<h3>Feature attribution drift: served rows vs at push</h3>"]
    if not drift["available"]:
        return "".join(out) + f"<div class='muted'>not judged: {_e(drift['reason'])}</div>"
    cost = drift["cost"]
    meter = report_charts.meter(1 - drift["ndcg"], 1 - drift["threshold"])      # 1 - NDCG against 1 - threshold
    out.append(f"<div>NDCG of the window's ranking against the push-time one {meter} "
               f"<b{' class=bad' if drift['drifted'] else ''}>{drift['ndcg']:.3f}</b> (flagged below "
               f"{drift['threshold']:g}) · sampled Shapley values of {drift['rows']} served rows vs "
               f"{drift['push_rows']} evaluation rows at push · {cost.get('seconds', 0):.1f} s, "
               f"{cost.get('model_calls', 0)} model calls on {cost.get('model_rows', 0)} rows</div>")
    out.append("<table><tr><th>feature</th><th class='num'>share at push</th><th class='num'>share in the window"
               "</th><th class='num'>change</th><th></th><th class='num'>rank at push → window</th></tr>")
    top = set(drift["top_movers"])
    for f in drift["features"]:
        bars = (f"<svg width='120' height='14'><rect width='{120 * f['push_share']:.1f}' height='6' "
                f"fill='{TRAIN_COLOR}'/><rect y='7' width='{120 * f['window_share']:.1f}' height='6' "
                f"fill='{SERVE_COLOR}'/></svg>")
        out.append(f"<tr><td{' class=bad' if f['name'] in top and drift['drifted'] else ''}>{_e(f['name'])}"
                   f"{' (top mover)' if f['name'] in top else ''}</td><td class='num'>{f['push_share']:.3f}</td>"
                   f"<td class='num'>{f['window_share']:.3f}</td><td class='num'>{f['change']:+.3f}</td>"
                   f"<td>{bars}</td><td class='num'>{f['push_rank']} → {f['window_rank']}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _reuse_html(group: Dict) -> str:
    if not group.get("reuse_candidates"):
        return ""
    out = ["<h3>Previously blessed models vs this window</h3><table><tr><th>model</th>"
           "<th>features over threshold</th><th>ERROR anomalies</th><th>matches</th></tr>"]
    for c in group["reuse_candidates"]:
        out.append(f"<tr><td>{_e(c['model_id'])}</td><td>{_e(', '.join(c['over']) or '–')}</td>"
                   f"<td>{c['errors']}</td><td>{'yes' if c['matches'] else 'no'}</td></tr>")
    out.append("</table>")
    return "".join(out)
