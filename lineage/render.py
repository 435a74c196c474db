"""Text, Graphviz DOT and self-contained HTML (inline SVG, no scripts, no network)
for lineage answers. Functions take the plain data from ``lineage.trace`` /
``lineage.runs`` or a ``lineage.graph.Graph`` and return strings."""
import html as _html
import json
from typing import Dict, List, Optional, Tuple

from lineage import graph as G
from core import mlmd


def _short(value, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 100 else f"{value:.4f}"
    return str(value)


def _args(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v, 40)}" for k, v in sorted(value.items())) or "-"
    return _short(value)


# ----------------------------------------------------------------- model tree
def _artifact_lines(node: Dict) -> Tuple[str, List[str]]:
    facts = node.get("facts") or {}
    head = f"{node['type']} #{node['id']}"
    if node.get("key"):
        head = f"{node['key']}: {head}"
    kind, details = node["type"], []
    if kind == mlmd.PUSHED_MODEL:
        head += f"  version {facts.get('version')} -> {facts.get('destination')}"
    elif kind == mlmd.BLESSING:
        head += "  blessed: " + ("yes" if facts.get("blessed") else "NO")
    elif kind == mlmd.EXAMPLES:
        head += f"  span {facts.get('span')}" + (f", splits {', '.join(facts['splits'])}"
                                                if facts.get("splits") else "")
    elif kind == mlmd.SCHEMA and facts.get("features") is not None:
        head += f"  {facts['features']} features, sha256 {facts['schema_sha256'][:12]}"
    if node.get("shown_elsewhere"):
        return head + "  (traced elsewhere in this tree)", []
    if node.get("not_followed"):
        return (head + "  (another model's history: `tfxops lineage artifact "
                f"{node['id']} --upstream`)"), []
    details.append(f"uri {node['uri']}")
    if node.get("reused_by_runs"):
        runs = node["reused_by_runs"]
        details.append(f"reused from cache by {len(runs)} later run(s): " + ", ".join(runs[:3])
                       + (" ..." if len(runs) > 3 else ""))
    for check in node.get("checks", []):
        outputs = []
        for out in check["outputs"]:
            f = out.get("facts") or {}
            text = f"{out['type']} #{out['id']}"
            if f.get("num_examples"):
                text += " (" + ", ".join(f"{k} {v} rows" for k, v in sorted(f["num_examples"].items())) + ")"
            if f.get("no_anomalies") is not None:
                clean = f["no_anomalies"]
                text += (" (no anomalies)" if isinstance(clean, dict) and all(clean.values())
                         else f" (anomalies by split: {_short(clean)})")
            outputs.append(text)
        verb = "evaluated by" if "thresholds" in (check.get("facts") or {}) else (
            "checked by" if node["type"] == mlmd.EXAMPLES else "read by")
        details.append(f"{verb} {check['node_id']} #{check['id']} [{check['state']}]"
                       + (": " + "; ".join(outputs) if outputs else ""))
        for metric in (check.get("facts") or {}).get("metrics") or []:
            details.append(f"  {metric['metric']} {_num(metric['value'])}"
                           + (f" (threshold {metric['threshold']})" if metric.get("threshold") else ""))
    return head, details


def _execution_lines(node: Dict) -> Tuple[str, List[str]]:
    head = (f"<- {node['node_id']} (execution #{node['id']}, {node['state']}, {node['seconds']:.1f} s"
            + (f", run {node['run_id']})" if node.get("run_id") else f", {node['started']})"))
    if node.get("shown_elsewhere"):
        return head + "  (shown above)", []
    facts, lines = node.get("facts") or {}, []
    if "input_base" in facts:
        lines.append(f"input {facts['input_base']}  patterns {_args(facts.get('patterns'))}  "
                     f"span {facts.get('span')}")
        lines.append(f"fingerprint {facts.get('input_fingerprint')}")
        for f in facts.get("files", []):
            lines.append(f"file {f['path']} ({f['bytes']} bytes)")
        if "unchanged_since" in facts:
            lines.append("input files unchanged since (same fingerprint now)" if facts["unchanged_since"]
                         else "input files CHANGED since this run (fingerprint differs now)")
    for key, value in (facts.get("code") or {}).items():
        lines.append(f"{key} {value}")
    if "train_args" in facts:
        lines.append(f"train_args {_args(facts.get('train_args'))}; eval_args {_args(facts.get('eval_args'))}")
        lines.append(f"hyperparameters {_args(facts.get('hyperparameters'))}")
    if "schema_file" in facts:
        lines.append(f"schema_file {facts['schema_file']}")
    if "push_destination" in facts:
        lines.append(f"push_destination {_short(facts['push_destination'])}")
    if "recovered" in facts:
        lines.append(f"recovered: {facts['recovered']}")
    if "thresholds" in facts:
        if facts.get("metrics"):
            lines.append(f"{'metric (overall)':<22}{'candidate':>11}{'baseline':>11}  threshold")
            for m in facts["metrics"]:
                lines.append(f"  {m['metric']:<20}{_num(m['value']):>11}{_num(m['baseline']):>11}  "
                             f"{m.get('threshold') or ''}")
        if facts.get("metrics_error"):
            lines.append(facts["metrics_error"])
        for failure in facts.get("validation_failures") or []:
            lines.append(f"FAILED {failure}")
        lines.append("baseline model: " + (f"Model #{facts['baseline_model_id']}"
                                           if facts.get("baseline_model_id") else "none (first blessed model)"))
    return head, lines


def tree_text(report: Dict) -> str:
    serving = " (serving now)" if report["serving_now"] else (
        f" (serving now: {report['serving_version']})" if report["serving_version"] else " (not served)")
    by = report.get("pushed_by") or {}
    source = (f"pushed by run {report['run_id']}" if report.get("run_id") else
              f"pushed by {by.get('node_id')} #{by.get('execution_id')}" if by else "producer not recorded")
    lines = [f"Model version {report['version']}{serving}, {source}",
             f"store {report['store']}", ""]
    if report.get("model_card"):
        lines[-1:-1] = [f"model card {report['model_card']} (and model_card.html beside it)"]
    if report.get("input_domain"):
        lines[-1:-1] = [f"input domain {report['input_domain']}"]

    def emit(node: Dict, prefix: str, last: bool, root: bool = False) -> None:
        head, details = (_artifact_lines(node) if node["kind"] == "artifact" else _execution_lines(node))
        branch = "" if root else ("`-- " if last else "|-- ")
        lines.append(prefix + branch + head)
        inner = prefix + ("" if root else ("    " if last else "|   "))
        children = node.get("produced_by", []) + node.get("inputs", [])
        for detail in details:
            lines.append(inner + ("|     " if children else "      ") + detail)
        for i, child in enumerate(children):
            emit(child, inner, i == len(children) - 1)

    emit(report["tree"], "", True, root=True)
    lines.append("")
    if report["downstream"]:
        lines.append("Used since by (downstream executions):")
        for d in report["downstream"]:
            ins = ", ".join(f"{i['key']}={i['type']} #{i['id']}" for i in d["inputs"])
            outs = ", ".join(f"{o['type']} #{o['id']}" for o in d["outputs"]) or "nothing"
            where = f" run {d['run_id']}" if d.get("run_id") else ""
            lines.append(f"  {d['node_id']} #{d['id']} [{d['state']}] {d['started']}{where}: "
                         f"read {ins}; wrote {outs}")
    else:
        lines.append("Used since by: nothing recorded (no monitoring or later evaluation read this model)")
    return "\n".join(lines)


# ----------------------------------------------------------------------- runs
def runs_text(rows: List[Dict]) -> str:
    if not rows:
        return "no runs"
    out = [f"{'RUN':<28} {'STARTED (UTC)':<21} {'SECONDS':>8}  {'STATUS':<9} {'EXEC':>4} {'CACHED':>6}  PUSHED"]
    for r in rows:
        out.append(f"{r['run_id']:<28} {r['started']:<21} {r['seconds']:>8.1f}  {r['status']:<9} "
                   f"{r['executed']:>4} {r['cached']:>6}  "
                   + (r["pushed_version"] or (f"- (cached: {r['cached_push_version']})"
                                              if r.get("cached_push_version") else "-")))
        parts = [f"{c['node_id']} {c['state']}" + (f" {c['seconds']:.1f}s" if c["state"] == "executed" else "")
                 for c in r["components"]]
        line = "    "
        for part in parts:
            if len(line) + len(part) > 110:
                out.append(line.rstrip(", "))
                line = "    "
            line += part + ", "
        out.append(line.rstrip(", "))
    return "\n".join(out)


# ----------------------------------------------------------------------- diff
def since_previous_text(report: Dict) -> str:
    since = report.get("since_previous") or {}
    if not since.get("previous_version"):
        return f"Changes since the previous pushed version: none to compare ({since.get('note', 'first push')})"
    head = (f"Changes since the previous pushed version {since['previous_version']} "
            f"(A = its run, B = this version's run):")
    return head + "\n" + "\n".join("  " + line for line in diff_text(since["diff"]).splitlines())


def diff_text(diff: Dict) -> str:
    out = [f"A: {diff['run_a']}", f"B: {diff['run_b']}"]
    if not diff["changed"]:
        out.append("No change in data, code, configuration, schema or metrics.")
    for section, changes in diff["changes"].items():
        out.append(f"{section}:")
        for c in changes:
            delta = f"  (delta {c['delta']:+.4f})" if "delta" in c else ""
            out.append(f"  {c['key']}\n    A: {_short(c['a'], 160)}\n    B: {_short(c['b'], 160)}{delta}")
    if diff["unchanged"]:
        out.append("unchanged: " + ", ".join(diff["unchanged"]))
    if diff["reused_outputs"]:
        out.append("same output artifacts (B reused A's, e.g. cached): " + ", ".join(diff["reused_outputs"]))
    return "\n".join(out)


# ---------------------------------------------------------- artifact subgraph
def _artifact_label(g: G.Graph, aid: int) -> str:
    a = g.artifacts[aid]
    extra = ""
    if g.type_of(aid) == mlmd.PUSHED_MODEL and mlmd.custom(a, "pushed_version"):
        extra = f" v{mlmd.custom(a, 'pushed_version')}"
    return f"{g.type_of(aid)} #{aid}{extra}"


def graph_text(g: G.Graph, title: str) -> str:
    out = [title, f"{len(g.artifacts)} artifacts, {len(g.executions)} executions "
                  f"(* = asked about)", ""]
    for eid in g.topological_executions():
        e = g.executions[eid]
        out.append(f"{g.execution_name(eid)} (execution #{eid}, {mlmd.STATE.Name(e.last_known_state)}, "
                   f"{mlmd.ms_to_iso(e.create_time_since_epoch)}, run {g.run_ids.get(eid)})")
        for label, edges in (("in ", g.inputs(eid)), ("out", g.outputs(eid))):
            for edge in sorted(edges, key=lambda x: (x.key, x.artifact_id)):
                mark = "*" if edge.artifact_id in g.focus else " "
                out.append(f"   {label} {mark}{edge.key:<18} {_artifact_label(g, edge.artifact_id):<28} "
                           f"{g.artifacts[edge.artifact_id].uri}")
    lonely = [a for a in g.artifacts if not any(e.artifact_id == a for e in g.edges)]
    for aid in lonely:
        out.append(f"*{_artifact_label(g, aid)} {g.artifacts[aid].uri} (no recorded producer or consumer)")
    return "\n".join(out)


# ---------------------------------------------------------------- box labels
LABEL_CHARS = 32          # characters per line in a box (wrapped, never cut)


def _wrap(text: str, width: int = LABEL_CHARS) -> List[str]:
    """``text`` on lines of at most ``width`` characters, broken at spaces, then at
    '/', '_' or '-', then anywhere: every character stays."""
    lines, line = [], ""
    for word in text.split(" "):
        while len(word) > width:
            cut = max(word.rfind(c, 0, width) for c in "/_-.") + 1 or width
            head, word = word[:cut], word[cut:]
            if line:
                lines.append(line)
                line = ""
            lines.append(head)
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def _short_time(ms: int) -> str:
    import datetime
    if not ms:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc).strftime("%b %d %H:%M")


def _artifact_facts(g: G.Graph, aid: int) -> List[str]:
    """What matters about an artifact at a glance: version, blessing, span, splits."""
    props, kind = mlmd.properties(g.artifacts[aid]), g.type_of(aid)
    facts = []
    if kind == mlmd.PUSHED_MODEL and props.get("pushed_version"):
        facts.append(f"version {props['pushed_version']}")
    if "blessed" in props:
        facts.append("blessed" if props["blessed"] else "NOT blessed")
    if props.get("span") is not None:
        facts.append(f"span {props['span']}")
    if isinstance(props.get("split_names"), list) and props["split_names"]:
        facts.append("splits " + ", ".join(props["split_names"]))
    return facts


def node_label(g: G.Graph, name: str, metrics: Dict[int, str]) -> List[str]:
    """A box's lines: type and id, what matters (version, blessing, span, a metric),
    the short time; wrapped, never cut."""
    ident = int(name[1:])
    if name[0] == "a":
        node = g.artifacts[ident]
        head, facts = f"{g.type_of(ident)} #{ident}", _artifact_facts(g, ident)
    else:
        node = g.executions[ident]
        head = f"{g.execution_name(ident)} #{ident}"
        facts = [metrics[ident]] if ident in metrics else []
    when = _short_time(node.create_time_since_epoch)
    if name[0] == "e":
        when = f"{mlmd.STATE.Name(node.last_known_state).lower()} · {when}"
    return _wrap(head) + _wrap(" · ".join(facts)) + _wrap(when)


def evaluator_metrics(report: Optional[Dict]) -> Dict[int, str]:
    """Execution id -> its headline metric ("auc 0.939") from a model report's tree."""
    found: Dict[int, str] = {}

    def walk(node: Dict) -> None:
        facts = node.get("facts") or {}
        if node.get("kind") == "execution" and facts.get("metrics"):
            m = next((x for x in facts["metrics"] if x["metric"] in ("auc", "AUC")), facts["metrics"][0])
            found[node["id"]] = f"{m['metric']} {_num(m['value'])}"
        for child in node.get("produced_by", []) + node.get("inputs", []) + node.get("checks", []):
            walk(child)
    if report and report.get("tree"):
        walk(report["tree"])
    return found


def _edges_of(g: G.Graph) -> List[Tuple[str, str, str]]:
    """(source, target, key) in data-flow order: artifact -> execution -> artifact."""
    out = []
    for edge in g.edges:
        if edge.artifact_id not in g.artifacts or edge.execution_id not in g.executions:
            continue
        a, e = f"a{edge.artifact_id}", f"e{edge.execution_id}"
        out.append((a, e, edge.key) if edge.is_input else (e, a, edge.key))
    return out


def _node_names(g: G.Graph) -> List[str]:
    return [f"a{a}" for a in sorted(g.artifacts)] + [f"e{e}" for e in sorted(g.executions)]


# ------------------------------------------------------------------------ DOT
def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def dot(g: G.Graph, title: str, metrics: Optional[Dict[int, str]] = None) -> str:
    """Graphviz DOT: data flowing upwards to the asked artifact, labels wrapped."""
    lines = ["digraph lineage {", f'  label="{_dot_escape(title)}"; labelloc=t; rankdir=BT; nodesep=0.25; ranksep=0.35;',
             '  node [fontname="Helvetica", fontsize=10, margin="0.08,0.04"];', '  edge [color="#889"];']
    for name in _node_names(g):
        text = "\\n".join(_dot_escape(line) for line in node_label(g, name, metrics or {}))
        ident = int(name[1:])
        focus = name[0] == "a" and ident in g.focus
        shape = ('shape=note, style=filled, fillcolor="#fff4e0"' if name[0] == "a"
                 else 'shape=box, style="rounded,filled", fillcolor="#e8f0fe"')
        extra = ', color="#cc3333", penwidth=2.5, class="focus"' if focus else ""
        lines.append(f'  {name} [{shape}{extra}, id="box-{name}", URL="#node-{name}", label="{text}"];')
    for src, dst, key in _edges_of(g):
        lines.append(f'  {src} -> {dst} [tooltip="{_dot_escape(key)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_svg(g: G.Graph, title: str, metrics: Optional[Dict[int, str]] = None) -> Optional[str]:
    """The graph laid out by Graphviz ``dot`` as an inline SVG scaled to the page;
    None when ``dot`` is not installed or fails."""
    import re
    import shutil
    import subprocess

    program = shutil.which("dot")
    if program is None:
        return None
    try:
        done = subprocess.run([program, "-Tsvg"], input=dot(g, "", metrics), capture_output=True, text=True,
                              timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    svg = done.stdout[done.stdout.find("<svg"):]
    svg = re.sub(r'\s+xmlns:xlink="[^"]*"', "", svg)
    svg = svg.replace("xlink:href=", "href=").replace("xlink:title=", "data-title=")
    match = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    if match is None:
        return None
    width = float(match.group(1)) * 4 / 3
    return re.sub(r'<svg width="[\d.]+pt" height="[\d.]+pt"',
                  f'<svg class="lineage" width="100%" style="max-width:{width:.0f}px;height:auto" '
                  f'preserveAspectRatio="xMidYMin meet"', svg, count=1)


# ----------------------------------------------------------------------- HTML
PAGE_CSS = ("body{font-family:Helvetica,Arial,sans-serif;margin:16px;max-width:1400px}"
            ".graph{border:1px solid #ccd;padding:4px}.graph svg{display:block;margin:0 auto}"
            "pre{background:#f6f7f9;padding:10px;overflow:auto;white-space:pre-wrap}"
            ".legend span{display:inline-block;padding:2px 8px;margin-right:8px;border:1px solid #556}"
            "table{border-collapse:collapse;font-size:12px;width:100%}td,th{border-bottom:1px solid #eee;"
            "padding:3px 6px;text-align:left;vertical-align:top}th{background:#fafafa}"
            "tr:target{background:#fff8e1}td.props{word-break:break-all}")


def html(g: G.Graph, title: str, text: Optional[str] = None, metrics: Optional[Dict[int, str]] = None,
         use_dot: bool = True) -> str:
    """One HTML file: the graph as an inline SVG that fits the page (Graphviz ``dot``
    when installed and ``use_dot``, else ``lineage.layout``), every box's properties
    in a table below it (each box links to its row), then the text answer. Opens
    from disk; no scripts, fonts or network."""
    esc = _html.escape
    svg = (dot_svg(g, title, metrics) if use_dot else None) or _svg(g, metrics or {})
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>\n"
            f"<style>{PAGE_CSS}</style></head><body>\n<h2>{esc(title)}</h2>\n"
            "<p class=\"legend\"><span style=\"background:#fff4e0\">artifact</span>"
            "<span style=\"background:#e8f0fe;border-radius:10px\">execution</span>"
            "<span style=\"border-color:#c33;border-width:2px\">asked about</span> data flows upwards; "
            "click a box for its properties below</p>\n"
            f"<div class=\"graph\">{svg}</div>\n<h3>Properties</h3>\n{_properties_table(g)}\n"
            + (f"<h3>As text</h3><pre>{esc(text)}</pre>\n" if text else "")
            + "</body></html>\n")


def _properties_table(g: G.Graph) -> str:
    esc, rows = _html.escape, []
    for name in _node_names(g):
        ident = int(name[1:])
        if name[0] == "a":
            node, kind = g.artifacts[ident], g.type_of(ident)
            where = node.uri
        else:
            node, kind = g.executions[ident], g.execution_type(ident)
            where = f"{mlmd.STATE.Name(node.last_known_state)}, run {g.run_ids.get(ident)}"
        props = "; ".join(f"{k}={_short(v, 300)}" for k, v in sorted(mlmd.properties(node).items()))
        rows.append(f'<tr id="node-{name}"><td>{esc(name[0] == "a" and "artifact" or "execution")} #{ident}'
                    f'</td><td>{esc(kind)}</td><td>{esc(mlmd.ms_to_iso(node.create_time_since_epoch))}</td>'
                    f'<td class="props">{esc(where)}</td><td class="props">{esc(props) or "–"}</td></tr>')
    return ("<table><tr><th>node</th><th>type</th><th>created (UTC)</th><th>uri / state, run</th>"
            "<th>properties</th></tr>" + "".join(rows) + "</table>")


def _svg(g: G.Graph, metrics: Dict[int, str]) -> str:
    """The graph as an SVG element laid out by ``lineage.layout``, scaled to the page."""
    from lineage import layout as layout_lib

    labels = {name: node_label(g, name, metrics) for name in _node_names(g)}
    edges = _edges_of(g)
    placed = layout_lib.layout({n: len(lines) for n, lines in labels.items()}, [(a, b) for a, b, _ in edges])
    w, h = placed.width, placed.height
    parts = [f'<svg class="lineage" xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {w:.0f} {h:.0f}" '
             f'style="max-width:{w:.0f}px;height:auto" font-family="Helvetica, Arial, sans-serif" font-size="11">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>']
    for src, dst, key in edges:
        if (src, dst) in placed.routes:
            parts.append(_svg_edge(key, placed.routes[(src, dst)]))
    parts += [_svg_node(g, name, labels[name], placed.boxes[name]) for name in labels if name in placed.boxes]
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_edge(key: str, points: List[Tuple[float, float]]) -> str:
    """A curve through the route's points, leaving and entering boxes vertically."""
    d = [f"M{points[0][0]:.0f},{points[0][1]:.0f}"]
    for (x1, y1), (x2, y2) in zip(points, points[1:]):
        mid = (y1 + y2) / 2
        d.append(f"C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} {x2:.0f},{y2:.0f}")
    return (f'<path d="{" ".join(d)}" fill="none" stroke="#889" marker-end="url(#arrow)">'
            f'<title>{_html.escape(key)}</title></path>')


def _svg_node(g: G.Graph, name: str, lines: List[str], box) -> str:
    """Node ``a<id>`` (artifact) or ``e<id>`` (execution) as a box with its label lines."""
    from lineage.layout import LINE_H, PAD

    esc, ident = _html.escape, int(name[1:])
    artifact = name[0] == "a"
    fill, radius = ("#fff4e0", 4) if artifact else ("#e8f0fe", 12)
    focus = artifact and ident in g.focus
    stroke = 'stroke="#c33" stroke-width="2.5"' if focus else 'stroke="#556"'
    styles = [' font-weight="bold"'] + [' fill="#445"'] * len(lines)
    text = "".join(f'<text x="{box.x + PAD:.0f}" y="{box.y + PAD + LINE_H * (i + 1) - 3:.0f}"{styles[i]}>'
                   f'{esc(line)}</text>' for i, line in enumerate(lines))
    return (f'<a href="#node-{name}"><g id="box-{name}" class="node{" focus" if focus else ""}">'
            f'<rect x="{box.x:.0f}" y="{box.y:.0f}" width="{box.w:.0f}" height="{box.h:.0f}" rx="{radius}" '
            f'fill="{fill}" {stroke}/>{text}</g></a>')


def model_graph_title(report: Dict) -> str:
    by = report.get("pushed_by") or {}
    source = (f"run {report['run_id']}" if report.get("run_id") else
              f"pushed by {by.get('node_id')} #{by.get('execution_id')}" if by else "producer not recorded")
    return f"Lineage of model version {report['version']} ({source})"


def model_text(report: Dict) -> str:
    """``tfxops lineage model``'s text: the tree, then what changed since the previous version."""
    return tree_text(report) + "\n\n" + since_previous_text(report)


def model_html(report: Dict, graph, use_dot: bool = True) -> str:
    """The model's lineage graph as a self-contained page, with the text below it."""
    return html(graph, model_graph_title(report), model_text(report), evaluator_metrics(report), use_dot)
