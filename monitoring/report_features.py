"""The report's per-feature sections for one served version: the table (state,
skew and drift against their thresholds, the statistic the sample-size rule picked,
why it is or is not flagged) and one card per feature (its chart on readable bins
and its figures in training and in the window, side by side)."""
import dataclasses
import html
from pathlib import Path
from typing import Dict, List, Optional

from monitoring import report_bins, report_charts, report_statistics as stats_lib, report_verdict as verdict_lib
from monitoring.report_bins import human
from monitoring.report_charts import percent

STATE_LABELS = {verdict_lib.FLAGGED: ("flagged", "bad"), verdict_lib.NOTED: ("over, not a trigger", "note"),
                verdict_lib.OK: ("within", "fine"), verdict_lib.UNWATCHED: ("not watched", "quiet"),
                verdict_lib.NOT_COMPUTED: ("not computed", "quiet"),
                verdict_lib.FEW: ("too few rows to judge", "quiet")}

MEASURES = {"jensen shannon divergence": "Jensen-Shannon distance", "l infty": "L-infinity distance"}


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


@dataclasses.dataclass
class FeatureView:
    """One feature of a version's window, ready to show."""
    result: Dict                                  # the monitor's FeatureResult as JSON
    verdict: verdict_lib.Verdict
    distribution: Optional[Dict]
    training: Optional[stats_lib.Summary]
    serving: Optional[stats_lib.Summary]
    test: Optional[stats_lib.Test]


def feature_views(group: Dict, policy: Dict, home: Optional[Path]) -> List[FeatureView]:
    """Every feature of the version, flagged first, from the window's and the training
    split's statistics files (the result's distributions when they cannot be read)."""
    training = stats_lib.load((group.get("baseline") or {}).get("statistics"), home)
    serving = stats_lib.load(group.get("statistics"), home)
    saved = group.get("distributions") or {}
    views = []
    for f in group.get("features") or []:
        t, s = stats_lib.feature_of(training, f["name"]), stats_lib.feature_of(serving, f["name"])
        t_sum, s_sum = stats_lib.summarize(t, stats_lib.rows_of(training)), stats_lib.summarize(s, stats_lib.rows_of(serving))
        counts = {"training": t_sum.count if t_sum else None, "serving": s_sum.count if s_sum else None}
        dist = report_bins.distribution(t, s, f["name"]) if (t is not None or s is not None) else saved.get(f["name"])
        views.append(FeatureView(f, verdict_lib.feature_verdict(f, policy, group.get("rows", 0), counts), dist,
                                 t_sum, s_sum, stats_lib.choose(f, t, s) if t is not None and s is not None else None))
    order = [verdict_lib.FLAGGED, verdict_lib.NOTED, verdict_lib.OK, verdict_lib.UNWATCHED,
             verdict_lib.NOT_COMPUTED, verdict_lib.FEW]
    return sorted(views, key=lambda v: (order.index(v.verdict.state), -(v.result.get("skew") or 0)))


# ------------------------------------------------------------------ the table
def table_html(views: List[FeatureView]) -> str:
    out = ["<h3>Features</h3><table class='features'><tr><th>feature</th><th>type</th><th>state</th>"
           "<th>skew vs training</th><th class='num'>skew</th><th class='num'>threshold</th>"
           "<th class='num'>drift</th><th>statistic by sample size</th><th>why</th></tr>"]
    for v in views:
        f, (label, css) = v.result, STATE_LABELS[v.verdict.state]
        few = v.verdict.state == verdict_lib.FEW
        out.append(f"<tr class='state-{css}'><td class='{css}'>{_e(f['name'])}</td><td>{_e(f['type'])}</td>"
                   f"<td><span class='pill {css}'>{label}</span></td>"
                   f"<td>{report_charts.meter(f.get('skew'), f.get('skew_threshold'), muted=few)}</td>"
                   f"<td class='num'>{_fmt(f.get('skew'))}</td><td class='num'>{_fmt(f.get('skew_threshold'), 2)}</td>"
                   f"<td class='num'>{_fmt(f.get('drift'))}</td><td>{_test_html(v.test)}</td>"
                   f"<td class='why'>{'<br>'.join(_e(r) for r in v.verdict.reasons)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _test_html(test: Optional[stats_lib.Test]) -> str:
    if test is None:
        return "<span class='muted'>–</span>"
    rows = f"n = {test.rows[0]:,} / {test.rows[1]:,}"
    if test.p_value is None:
        method = MEASURES.get(test.method, test.method)
        return f"{_e(method)} {_fmt(test.value)} <span class='muted'>({rows}: large samples)</span>"
    verdict = "differs" if test.significant else "no evidence of a change"
    return (f"{_e(test.method)}: p = {test.p_value:.3g} ({verdict} at {stats_lib.SIGNIFICANCE:g}) "
            f"<span class='muted'>({rows}; {_e(test.note)})</span>")


# ------------------------------------------------------------------ the cards
def cards_html(views: List[FeatureView], prediction: Optional[Dict]) -> str:
    out = ["<h3>Distributions</h3><div class='legend'><i style='background:"
           f"{report_charts.TRAIN_COLOR}'></i>training<i style='background:{report_charts.SERVE_COLOR}'>"
           "</i>this window <span class='muted'>(share of each side's values per bin)</span></div>"
           "<div class='grid'>"]
    if prediction and prediction.get("distribution"):
        out.append(f"<div class='card'><b>model output</b> <span class='muted'>(evaluation set vs served)</span>"
                   f"{_chart(prediction['distribution'], 'P(big tip)')}</div>")
    for v in views:
        _, css = STATE_LABELS[v.verdict.state]
        chart = _chart(v.distribution, _axis_title(v)) if v.distribution else \
            "<div class='muted'>no values to chart</div>"
        out.append(f"<div class='card'><b class='{css}'>{_e(v.result['name'])}</b> "
                   f"<span class='muted'>{_e(STATE_LABELS[v.verdict.state][0])}</span>{chart}"
                   f"{summary_table(v.training, v.serving, report_bins.is_time(v.result['name']))}</div>")
    out.append("</div>")
    return "".join(out)


def _chart(dist: Dict, axis_title: str) -> str:
    if dist.get("kind") == "categorical":
        return report_charts.hbars(dist)
    return report_charts.bars(dist, axis_title)


def _axis_title(v: FeatureView) -> str:
    kind = (v.distribution or {}).get("kind")
    if kind == "time":
        return f"{v.result['name']} (UTC, bin start)"
    return v.result["name"]


def summary_table(training: Optional[stats_lib.Summary], serving: Optional[stats_lib.Summary],
                  time: bool = False) -> str:
    """Count, missing, mean/std or top values, min/median/max, unique: both sides
    (a time column's figures as UTC dates)."""
    sides = [s for s in (training, serving) if s is not None]
    if not sides:
        return ""
    number = _date if time else human
    rows = [("rows with a value", lambda s: f"{s.count:,} of {s.rows:,}"), ("missing", lambda s: percent(s.missing))]
    if any(s.unique is not None for s in sides):
        rows += [("unique values", lambda s: "–" if s.unique is None else f"{s.unique:,}"),
                 ("top values", lambda s: "<br>".join(f"{_e(v)} {percent(p)}" for v, p in s.top) or "–")]
    else:
        rows += [("mean ± std", lambda s: f"{number(s.mean)} ± {_duration(s.std) if time else human(s.std)}"
                  if s.mean is not None else "–"),
                 ("min / median / max", lambda s: " / ".join(number(x) for x in (s.minimum, s.median, s.maximum))
                  if s.minimum is not None else "–"),
                 ("zeros", lambda s: percent(s.zeros))]
    cells = "".join(f"<tr><th>{name}</th><td>{fn(training) if training else '–'}</td>"
                    f"<td>{fn(serving) if serving else '–'}</td></tr>" for name, fn in rows)
    return f"<table class='summary'><tr><th></th><th>training</th><th>window</th></tr>{cells}</table>"


def _date(epoch: Optional[float]) -> str:
    import datetime

    if epoch is None:
        return "–"
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d")


def _duration(seconds: Optional[float]) -> str:
    return "–" if seconds is None else f"{seconds / 86400:,.0f} days"
