"""``<monitor_dir>/index.html``: every window at a glance, linking to its report; a
trend over windows for prediction drift, quality, and each feature's skew (and
drift) against its threshold. Windows under ``monitor_min_rows`` are drawn hollow
and grey: shown, not judged. Built from the windows' JSON results only."""
import html
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from monitoring import report_charts, report_verdict as verdict_lib


def _e(x) -> str:
    return html.escape(str(x))


def read_results(reports: Path) -> List[Tuple[Path, Dict]]:
    """The analysed windows' JSON results in ``reports``, oldest first (window ids
    start with their UTC time); unreadable files are left out."""
    out = []
    for path in sorted(reports.glob("*.json")) if reports.is_dir() else []:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("status", "analysed") == "analysed" and document.get("window"):
            out.append((path, document))
    return out


def _served_group(document: Dict) -> Optional[Dict]:
    groups = document.get("versions") or []
    return next((g for g in groups if g.get("current")), groups[0] if groups else None)


def _label(document: Dict) -> str:
    window = str(document["window"])
    return f"{window[4:6]}-{window[6:8]} {window[9:11]}:{window[11:13]}" if len(window) > 13 else window


def render(documents: List[Tuple[Path, Dict]], policy: Dict, css: str) -> str:
    """The index page (``css``: the reports' style sheet)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>tfxops monitoring: {len(documents)} "
           f"windows</title><style>{css}</style></head><body><h1>Monitoring: {len(documents)} window(s)</h1>",
           "<div class='muted'>Each point and row links to its window's report; hollow grey points: too few rows "
           "to judge; red: over the threshold (dashed line).</div>", _windows_table(documents, policy)]
    if documents:
        out.append("<h2>Prediction drift and quality over time</h2><div class='grid'>"
                   + _card("prediction drift (served vs evaluation set)", _prediction_points(documents, policy),
                           _threshold(documents, lambda g: (g.get("prediction") or {}).get("threshold")))
                   + _card("AUC on labelled requests", _quality_points(documents, policy), None, "AUC")
                   + "</div><h2>Features: skew vs training over time</h2><div class='grid'>"
                   + "".join(_feature_card(name, documents, policy) for name in _feature_names(documents))
                   + "</div>")
    out.append("</body></html>")
    return "".join(out)


def _windows_table(documents: List[Tuple[Path, Dict]], policy: Dict) -> str:
    rows = []
    for path, document in reversed(documents):
        decision, group = document.get("decision") or {}, _served_group(document) or {}
        judged = document.get("policy") or policy
        few = group and verdict_lib.too_few_rows(group.get("rows", 0), judged)
        flagged = ", ".join(group.get("flagged_features") or []) or "none"
        rows.append(f"<tr><td><a href='reports/{_e(path.with_suffix('.html').name)}'>{_e(document['window'])}</a></td>"
                    f"<td>{_e(document.get('finished', ''))}</td><td class='num'>{document.get('rows', 0):,}</td>"
                    f"<td><b>{_e(decision.get('action', 'none'))}</b> <span class='muted'>"
                    f"{_e(decision.get('because', ''))}</span></td>"
                    f"<td>{'<span class=quiet>too few rows to judge</span>' if few else _e(flagged)}</td></tr>")
    return ("<table><tr><th>window</th><th>finished (UTC)</th><th class='num'>rows</th><th>decision</th>"
            "<th>flagged features</th></tr>" + "".join(rows) + "</table>")


def _point(path: Path, document: Dict, value, policy: Dict, over: bool) -> Dict:
    group = _served_group(document) or {}
    few = verdict_lib.too_few_rows(group.get("rows", 0), document.get("policy") or policy)
    return {"label": _label(document), "value": value, "href": f"reports/{path.with_suffix('.html').name}",
            "muted": few, "over": over and not few}


def _prediction_points(documents, policy) -> List[Dict]:
    out = []
    for path, document in documents:
        pred = (_served_group(document) or {}).get("prediction") or {}
        out.append(_point(path, document, pred.get("distance") if pred.get("available") else None, policy,
                          bool(pred.get("over"))))
    return out


def _quality_points(documents, policy) -> List[Dict]:
    return [_point(path, document, ((_served_group(document) or {}).get("quality") or {}).get("auc"), policy,
                   bool(((_served_group(document) or {}).get("quality") or {}).get("over")))
            for path, document in documents]


def _feature_names(documents) -> List[str]:
    names = []
    for _, document in documents:
        for f in (_served_group(document) or {}).get("features") or []:
            if f["name"] not in names:
                names.append(f["name"])
    return sorted(names)


def _feature(document: Dict, name: str) -> Dict:
    return next((f for f in (_served_group(document) or {}).get("features") or [] if f["name"] == name), {})


def _threshold(documents, pick) -> Optional[float]:
    for _, document in reversed(documents):
        group = _served_group(document)
        if group is not None and pick(group) is not None:
            return pick(group)
    return None


def _feature_card(name: str, documents, policy) -> str:
    points = [_point(path, d, _feature(d, name).get("skew"), policy, bool(_feature(d, name).get("over_skew")))
              for path, d in documents]
    threshold = _threshold(documents, lambda g: next((f.get("skew_threshold") for f in g.get("features") or []
                                                      if f["name"] == name), None))
    drift = [_feature(d, name).get("drift") for _, d in documents]
    note = "" if threshold is not None else " <span class='muted'>(not watched: no threshold)</span>"
    return _card(f"{name}{note}", points, threshold, "skew", drift if any(v is not None for v in drift) else None)


def _card(title: str, points: List[Dict], threshold: Optional[float], y_title: str = "distance",
          drift: Optional[List] = None) -> str:
    legend = (f" <span class='muted'>— skew; <span style='color:{report_charts.DRIFT_COLOR}'>- - drift vs the "
              f"previous window</span></span>") if drift else ""
    return (f"<div class='card'><b>{title}</b>{legend}"
            f"{report_charts.trend(points, threshold, y_title=y_title, second=drift)}</div>")
