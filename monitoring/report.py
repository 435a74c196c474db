"""The run's JSON result and a self-contained HTML report (inline SVG, no scripts,
no external files): the decision first, then per served version the features
sorted by how far they are over their threshold, training vs serving
distributions side by side, anomalies, prediction drift and quality."""
import html
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from monitoring import out_of_domain
from monitoring import probing, redacted
from monitoring import poisoning

TRAIN_COLOR, SERVE_COLOR = "#4C78A8", "#F58518"


# ------------------------------------------------------------------ distributions
def distribution(training_feature, serving_feature, top: int = 12) -> Optional[Dict]:
    """Both sides' mass per bin: training-quantile bins for numbers, top values for strings."""
    from monitoring import checks

    kind = (training_feature or serving_feature)
    if kind is None:
        return None
    if kind.WhichOneof("stats") == "num_stats":
        a, b = checks.quantile_cdf(training_feature), checks.quantile_cdf(serving_feature)
        base = a or b
        if base is None:
            return None
        edges = list(np.unique(np.concatenate([base[1], base[2][-1:]])))
        labels = [f"≤{_num(edges[0])}"] + [f"{_num(lo)}–{_num(hi)}" for lo, hi in zip(edges, edges[1:])] \
            + [f">{_num(edges[-1])}"]

        def masses(side):
            if side is None:
                return None
            return [max(0.0, v) for v in np.diff([0.0] + [side[0](x) for x in edges] + [1.0])]
        return {"kind": "numeric", "bins": labels, "training": masses(a), "serving": masses(b)}
    if kind.WhichOneof("stats") == "string_stats":
        def freqs(feature):
            if feature is None or feature.WhichOneof("stats") != "string_stats":
                return None
            stats = feature.string_stats
            total = stats.common_stats.num_non_missing or 1
            values = {}
            for bucket in stats.rank_histogram.buckets or []:
                values[bucket.label] = bucket.sample_count / total
            for tv in stats.top_values:
                values[tv.value] = tv.frequency / total
            return values
        t, s = freqs(training_feature), freqs(serving_feature)
        keys = sorted(set((t or {})) | set((s or {})),
                      key=lambda k: -max((t or {}).get(k, 0), (s or {}).get(k, 0)))[:top]
        return {"kind": "categorical", "bins": keys,
                "training": [(t or {}).get(k, 0.0) for k in keys] if t is not None else None,
                "serving": [(s or {}).get(k, 0.0) for k in keys] if s is not None else None}
    return None


def _num(x: float) -> str:
    return f"{x:.4g}"


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


def write(result) -> None:
    """A pass's ``result.MonitorResult`` as its JSON and HTML report files (``result.report``)."""
    _write_atomically(Path(result.report.json), result.to_json())
    _write_atomically(Path(result.report.html), render_html(result.to_dict()))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------ HTML
CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.box{padding:12px 16px;border-radius:6px;margin:12px 0}
.ok{background:#e8f5e9;border:1px solid #a5d6a7}.warn{background:#fff8e1;border:1px solid #ffe082}
.act{background:#ffebee;border:1px solid #ef9a9a}table{border-collapse:collapse;margin:6px 0}
td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#fafafa}.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#c62828;font-weight:600}.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #e0e0e0;border-radius:6px;padding:8px;width:360px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _bars(dist: Dict, width: int = 340, height: int = 150) -> str:
    bins = dist["bins"]
    t, s = dist.get("training"), dist.get("serving")
    n = max(1, len(bins))
    peak = max([v for side in (t, s) if side for v in side] + [1e-9])
    slot = (width - 10) / n
    bar = max(1.0, slot / 2 - 1)
    parts = [f'<svg width="{width}" height="{height + 46}" role="img">']
    for i, label in enumerate(bins):
        x = 5 + i * slot
        for j, (side, color) in enumerate(((t, TRAIN_COLOR), (s, SERVE_COLOR))):
            if side is None:
                continue
            h = height * side[i] / peak
            parts.append(f'<rect x="{x + j * bar:.1f}" y="{height - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{_e(label)}: '
                         f'{"training" if j == 0 else "serving"} {side[i]:.3f}</title></rect>')
        short = _e(label if len(label) <= 10 else label[:9] + "…")
        parts.append(f'<text x="{x + slot / 2:.1f}" y="{height + 10}" font-size="9" '
                     f'transform="rotate(35 {x + slot / 2:.1f} {height + 10})">{short}</text>')
    parts.append(f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/></svg>')
    return "".join(parts)


def _meter(distance: Optional[float], threshold: Optional[float]) -> str:
    if distance is None:
        return '<span class="muted">n/a</span>'
    scale = max(distance, threshold or 0, 0.2) * 1.1
    w = 120
    dx = w * distance / scale
    over = threshold is not None and distance > threshold
    svg = [f'<svg width="{w}" height="12"><rect width="{w}" height="12" fill="#f0f0f0"/>',
           f'<rect width="{dx:.1f}" height="12" fill="{"#e53935" if over else "#90a4ae"}"/>']
    if threshold is not None:
        tx = w * threshold / scale
        svg.append(f'<line x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="12" stroke="#000" stroke-width="2"/>')
    svg.append("</svg>")
    return "".join(svg)


def render_html(result: Dict) -> str:
    decision = result.get("decision") or {}
    action = decision.get("action", "none")
    cls = "act" if action != "none" else ("warn" if decision.get("triggered") else "ok")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>tfxops monitor "
           f"{_e(result.get('window'))}</title><style>{CSS}</style></head><body>",
           f"<h1>Monitoring report: window {_e(result.get('window'))}</h1>",
           f"<div class='muted'>{_e(result.get('finished'))} · {result.get('rows', 0)} rows in "
           f"{result.get('requests', 0)} requests from {len(result.get('files', []))} log file(s)"
           f"{' · resumed after a crash' if result.get('resumed') else ''}"
           f"{' · dry run' if result.get('dry_run') else ''}</div>"]
    out.append(f"<div class='box {cls}'><b>Decision: {_e(action.upper())}</b> — {_e(decision.get('because', ''))}")
    if decision.get("reasons"):
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in decision["reasons"]) + "</ul>")
    if decision.get("outcome"):
        out.append(f"<div>Outcome: <code>{_e(json.dumps(json_safe(decision['outcome'])))}</code></div>")
    out.append("</div>")
    out.append(poisoning.held_html(decision.get("outcome"), str(result.get("window"))))   # issue 16 part 5a
    out.append(_files_html(result))
    for item in result.get("not_judged") or []:
        out.append(f"<div class='box warn'><b>Model {_e(item['model_name'])} version {_e(item['version'])}: "
                   f"no lineage: not judged</b> ({item['rows']} rows, {item['requests']} requests; the window "
                   f"was analysed for the other versions and committed)<br>{_e(item['reason'])}</div>")
    if result.get("unattributed_rejections"):
        out.append("<h2>Rejected before a model version was chosen</h2>"
                   + _rejections_html(result["unattributed_rejections"]))
    for group in result.get("versions", []):
        out.append(_version_html(group))
    out.append("<p class='muted'>Skew: L-infinity distance (categorical, TFDV) or Jensen-Shannon "
               "divergence over the training quantile bins (numeric), serving vs the training split "
               "of the model's own data; thresholds from the schema's skew/drift comparators; "
               "– = the schema sets none (shown, never alarms). Drift: vs the previous window.</p>")
    out.append("</body></html>")
    return "".join(out)


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


def _version_html(group: Dict) -> str:
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
    features = group.get("features", [])
    order = sorted(features, key=lambda f: (not f["flagged"], -(f["skew"] or 0) / (f["skew_threshold"] or 10)))
    out += [_features_html(order), _prediction_quality_html(group), _bias_html(group.get("bias")),
            _attribution_html(group.get("attribution")), out_of_domain.render_html(group.get("out_of_domain")),
            probing.render_html(group.get("probing")), redacted.render_html(group.get("redaction")),
            _reuse_html(group), _distributions_html(group, order)]
    return "".join(out)


def _features_html(order: List[Dict]) -> str:
    out = ["<h3>Features</h3><table><tr><th>feature</th><th>type</th><th>skew vs training</th>"
           "<th class='num'>distance</th><th class='num'>threshold</th><th class='num'>drift</th>"
           "<th>anomalies</th></tr>"]
    for f in order:
        mark = " class='bad'" if f["flagged"] else ""
        anomalies = "<br>".join(f"<b>{_e(a['severity'])}</b> {_e(a['short'])}: {_e(a['description'])}"
                                for a in f["anomalies"])
        out.append(f"<tr><td{mark}>{_e(f['name'])}</td><td>{_e(f['type'])}</td>"
                   f"<td>{_meter(f['skew'], f['skew_threshold'])}</td>"
                   f"<td class='num'>{_fmt(f['skew'])}</td><td class='num'>{_fmt(f['skew_threshold'], 2)}</td>"
                   f"<td class='num'>{_fmt(f['drift'])}</td><td>{anomalies}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _prediction_quality_html(group: Dict) -> str:
    pred = group.get("prediction") or {}
    quality = group.get("quality") or {}
    out = ["<h3>Predictions and quality</h3><table>"]
    if pred.get("available"):
        out.append(f"<tr><td>prediction drift (JS, served vs evaluation set)</td><td class='num'>"
                   f"{_fmt(pred.get('distance'))}</td><td>threshold {_fmt(pred.get('threshold'), 2)}"
                   f"{' <b class=bad>over</b>' if pred.get('over') else ''}</td></tr>")
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
        out.append("<table><tr><th>slice</th><th class='num'>rows</th><th class='num'>labelled</th>"
                   "<th class='num'>evaluation examples</th>" + "".join(
                       f"<th>{_e(m.replace('_', ' '))}: window / Evaluator (z)</th>" for m in metrics) + "</tr>")
        for item in bias["slices"]:
            cells = {c["metric"]: c for c in item["comparisons"]}
            out.append(f"<tr><td{' class=bad' if any(c['flagged'] for c in cells.values()) else ''}>"
                       f"{_e(item['feature'])}={_e(item['value'])}</td><td class='num'>{item['rows']}</td>"
                       f"<td class='num'>{item['labelled']}</td><td class='num'>"
                       f"{_e(item['evaluation_examples'] if item['evaluation_examples'] is not None else '–')}</td>"
                       + "".join(_bias_cell(cells.get(m)) for m in metrics) + "</tr>")
        out.append("</table>")
    if bias["gaps"]:
        out.append("<table><tr><th>feature</th><th>metric</th><th>gap in the window</th><th>gap at evaluation"
                   "</th><th class='num'>change</th><th class='num'>z</th></tr>" + "".join(
                       f"<tr><td{' class=bad' if g['flagged'] else ''}>{_e(g['feature'])}</td>"
                       f"<td>{_e(g['metric'].replace('_', ' '))}</td><td>{_fmt(g['window_gap'])} "
                       f"({_e(' vs '.join(g['between']))})</td><td>{_fmt(g['evaluation_gap'])} "
                       f"({_e(' vs '.join(g['between']))})</td><td class='num'>{g['change']:+.3f}</td>"
                       f"<td class='num'>{_fmt(g['z'], 1)}</td></tr>" for g in bias["gaps"]) + "</table>")
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
    meter = _meter(1 - drift["ndcg"], 1 - drift["threshold"])      # 1 - NDCG against 1 - threshold
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


def _distributions_html(group: Dict, order: List[Dict]) -> str:
    pred = group.get("prediction") or {}
    out = [f"<h3>Distributions</h3><div class='legend'><span style='background:{TRAIN_COLOR}'></span>"
           f"training<span style='background:{SERVE_COLOR}'></span>serving</div><div class='grid'>"]
    dists = group.get("distributions", {})
    if pred.get("distribution"):
        out.append(f"<div class='card'><b>model output</b> <span class='muted'>(evaluation set vs served)"
                   f"</span><br>{_bars(pred['distribution'])}</div>")
    for f in order:
        dist = dists.get(f["name"])
        if not dist:
            continue
        out.append(f"<div class='card'><b{' class=bad' if f['flagged'] else ''}>{_e(f['name'])}</b> "
                   f"<span class='muted'>skew {_fmt(f['skew'])}"
                   f"{'' if f['skew_threshold'] is None else ' / ' + _fmt(f['skew_threshold'], 2)}</span><br>"
                   f"{_bars(dist)}</div>")
    out.append("</div>")
    return "".join(out)
