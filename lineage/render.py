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


# ------------------------------------------------------------------------ DOT
def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def dot(g: G.Graph, title: str) -> str:
    lines = ["digraph lineage {", f'  label="{_dot_escape(title)}"; labelloc=t; rankdir=LR;',
             '  node [fontname="Helvetica", fontsize=10];']
    for aid in sorted(g.artifacts):
        style = ', penwidth=2.5' if aid in g.focus else ''
        lines.append(f'  a{aid} [shape=note, style=filled, fillcolor="#fff4e0"{style}, '
                     f'label="{_dot_escape(_artifact_label(g, aid))}", tooltip="{_dot_escape(g.artifacts[aid].uri)}"];')
    for eid in sorted(g.executions):
        state = mlmd.STATE.Name(g.executions[eid].last_known_state)
        lines.append(f'  e{eid} [shape=box, style="rounded,filled", fillcolor="#e8f0fe", '
                     f'label="{_dot_escape(g.execution_name(eid))}\\n#{eid} {state}\\n{_dot_escape(str(g.run_ids.get(eid)))}"];')
    for edge in g.edges:
        if edge.artifact_id not in g.artifacts or edge.execution_id not in g.executions:
            continue
        a, e = f"a{edge.artifact_id}", f"e{edge.execution_id}"
        src, dst = (a, e) if edge.is_input else (e, a)
        lines.append(f'  {src} -> {dst} [label="{_dot_escape(edge.key)}", fontsize=8];')
    lines.append("}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- HTML
NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 224, 48, 64, 22, 20


def _layout(g: G.Graph) -> Dict[str, Tuple[float, float]]:
    """Layered left-to-right layout: layer = longest path from a source, order in a
    layer by the mean position of neighbours (a few sweeps)."""
    nodes = [f"a{a}" for a in g.artifacts] + [f"e{e}" for e in g.executions]
    succ: Dict[str, List[str]] = {n: [] for n in nodes}
    pred: Dict[str, List[str]] = {n: [] for n in nodes}
    for edge in g.edges:
        a, e = f"a{edge.artifact_id}", f"e{edge.execution_id}"
        if a not in succ or e not in succ:
            continue
        src, dst = (a, e) if edge.is_input else (e, a)
        succ[src].append(dst)
        pred[dst].append(src)
    layer: Dict[str, int] = {}
    remaining = {n: len(set(pred[n])) for n in nodes}
    ready = sorted(n for n in nodes if remaining[n] == 0)
    while ready:
        n = ready.pop(0)
        layer.setdefault(n, 0)
        for m in sorted(set(succ[n])):
            layer[m] = max(layer.get(m, 0), layer[n] + 1)
            remaining[m] -= 1
            if remaining[m] == 0:
                ready.append(m)
    for n in nodes:                      # cycles cannot occur; be safe anyway
        layer.setdefault(n, 0)
    layers: Dict[int, List[str]] = {}
    for n in sorted(nodes, key=lambda x: (x[0], int(x[1:]))):
        layers.setdefault(layer[n], []).append(n)
    position = {n: i for members in layers.values() for i, n in enumerate(members)}
    for sweep in range(6):
        for index in sorted(layers, reverse=bool(sweep % 2)):
            neighbours = succ if sweep % 2 else pred

            def centre(n):
                near = [position[m] for m in neighbours[n]]
                return sum(near) / len(near) if near else position[n]
            layers[index].sort(key=centre)
            for i, n in enumerate(layers[index]):
                position[n] = i
    return {n: (MARGIN + layer[n] * (NODE_W + GAP_X), MARGIN + position[n] * (NODE_H + GAP_Y))
            for n in nodes}


def html(g: G.Graph, title: str, text: Optional[str] = None) -> str:
    """One HTML file: the graph as inline SVG (hover a node for details) and the
    text answer below it. Opens from disk; no scripts, fonts or network."""
    esc = _html.escape
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>\n"
            "<style>body{font-family:Helvetica,Arial,sans-serif;margin:16px}"
            ".graph{overflow:auto;border:1px solid #ccd;padding:4px}"
            "pre{background:#f6f7f9;padding:10px;overflow:auto}"
            ".legend span{display:inline-block;padding:2px 8px;margin-right:8px;border:1px solid #556}</style>"
            f"</head><body>\n<h2>{esc(title)}</h2>\n"
            "<p class=\"legend\"><span style=\"background:#fff4e0\">artifact</span>"
            "<span style=\"background:#e8f0fe;border-radius:10px\">execution</span>"
            "<span style=\"border-color:#c33\">asked about</span> hover a box for its properties</p>\n"
            f"<div class=\"graph\">{_svg(g)}</div>\n"
            + (f"<pre>{esc(text)}</pre>\n" if text else "")
            + "</body></html>\n")


def _svg(g: G.Graph) -> str:
    """The graph as an SVG element: edges as curves, nodes as boxes with a tooltip."""
    pos = _layout(g)
    width = max((x for x, _ in pos.values()), default=0) + NODE_W + 2 * MARGIN
    height = max((y for _, y in pos.values()), default=0) + NODE_H + 2 * MARGIN
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>']
    for edge in g.edges:
        a, e = f"a{edge.artifact_id}", f"e{edge.execution_id}"
        if a in pos and e in pos:
            parts.append(_svg_edge(edge, *((pos[a], pos[e]) if edge.is_input else (pos[e], pos[a]))))
    parts += [_svg_node(g, name, x, y) for name, (x, y) in pos.items()]
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_edge(edge: G.Edge, source: Tuple[float, float], target: Tuple[float, float]) -> str:
    (x1, y1), (x2, y2) = source, target
    x1, y1, x2, y2 = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
    mid = (x1 + x2) / 2
    return (f'<path d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}" '
            f'fill="none" stroke="#889" marker-end="url(#arrow)"><title>{_html.escape(edge.key)}</title></path>')


def _svg_node(g: G.Graph, name: str, x: float, y: float) -> str:
    """Node ``a<id>`` (artifact) or ``e<id>`` (execution) as a box at (x, y)."""
    esc, ident = _html.escape, int(name[1:])
    if name[0] == "a":
        artifact = g.artifacts[ident]
        line1, line2 = _artifact_label(g, ident), artifact.uri
        tip = json.dumps({"uri": artifact.uri, **mlmd.properties(artifact)}, indent=1, default=str)
        fill, radius = "#fff4e0", 4
    else:
        e = g.executions[ident]
        line1 = f"{g.execution_name(ident)} #{ident}"
        line2 = f"{mlmd.STATE.Name(e.last_known_state)} run {g.run_ids.get(ident)}"
        tip = json.dumps({"type": g.execution_type(ident), **mlmd.properties(e)}, indent=1, default=str)
        fill, radius = "#e8f0fe", 14
    stroke = 'stroke="#c33" stroke-width="2.5"' if ident in g.focus and name[0] == "a" else 'stroke="#556"'
    return (f'<g><title>{esc(tip[:3000])}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="{radius}" '
            f'fill="{fill}" {stroke}/>'
            f'<text x="{x + 8:.0f}" y="{y + 19:.0f}" font-weight="bold">{esc(_short(line1, 30))}</text>'
            f'<text x="{x + 8:.0f}" y="{y + 36:.0f}" fill="#445">{esc(_short(line2, 34))}</text></g>')


def model_graph_title(report: Dict) -> str:
    return f"Lineage of model version {report['version']} (run {report['run_id']})"


def model_text(report: Dict) -> str:
    """``tfxops lineage model``'s text: the tree, then what changed since the previous version."""
    return tree_text(report) + "\n\n" + since_previous_text(report)


def model_html(report: Dict, graph) -> str:
    """The model's lineage graph as a self-contained page, with the text beside it."""
    return html(graph, model_graph_title(report), model_text(report))
