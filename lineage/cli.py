"""tfxops lineage: read ML Metadata without learning its data model.

    tfxops lineage runs [--limit N] [--json]
    tfxops lineage model [VERSION|serving] [--json | --format text|dot|html] [-o FILE]
    tfxops lineage artifact ID [--upstream|--downstream] [--hops N] [--json | --format ...] [-o FILE]
    tfxops lineage diff RUN_A RUN_B [--json]

Read only: SQLite stores are opened READONLY (a missing file is an error, never a
new empty store); MySQL (``--set metadata_backend=mysql``) skips database creation.
Exit codes: 0 ok, 1 the store could not be read, 2 unknown run/version/artifact,
missing store or bad arguments.
"""
import json
import logging
import os
import sys
from pathlib import Path

from core import mlmd
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from

FORMATS = ("text", "dot", "html")


def _quiet_libraries() -> None:
    """TensorFlow/TFMA start-up lines on stderr are noise for a read-only query."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"   # before TensorFlow is imported (lazily, for metrics)
    for name in ("tensorflow", "absl", "apache_beam"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _emit(args, text: str) -> None:
    output = getattr(args, "output", None)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text if text.endswith("\n") else text + "\n")
        print(f"wrote {output}", file=sys.stderr)
    else:
        try:
            print(text)
            sys.stdout.flush()
        except BrokenPipeError:        # `tfxops lineage ... | head`
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def _open(args):
    settings = settings_from(args)
    store = mlmd.open_store(settings, readonly=True)
    return settings, store


# ------------------------------------------------------------------ commands
def cmd_runs(args) -> int:
    from lineage import render, runs

    settings, store = _open(args)
    rows = mlmd.with_retry(lambda: runs.runs_table(store, settings.pipeline_name, args.limit))
    if not rows:
        raise mlmd.MetadataError(f"the store {mlmd.describe_store(settings)} has no runs of pipeline "
                                 f"'{settings.pipeline_name}'")
    _emit(args, _json(rows) if args.json else render.runs_text(rows))
    return EXIT_OK


def cmd_model(args) -> int:
    from lineage import render
    from lineage.model import model_lineage

    report, graph = model_lineage(settings_from(args), args.version, with_metrics=not args.no_metrics)
    if args.json:
        _emit(args, _json(report))
    elif args.format == "dot":
        _emit(args, render.dot(graph, render.model_graph_title(report)))
    elif args.format == "html":
        _emit(args, render.model_html(report, graph))
    else:
        _emit(args, render.model_text(report))
    return EXIT_OK


def cmd_artifact(args) -> int:
    from lineage import graph as G
    from lineage import render, trace

    settings, store = _open(args)
    direction = "upstream" if args.upstream and not args.downstream else (
        "downstream" if args.downstream and not args.upstream else "both")
    g = mlmd.with_retry(lambda: G.subgraph(store, args.id, direction, args.hops))
    title = f"Lineage of artifact {args.id} ({g.type_of(args.id)}), {direction}, {args.hops} hops"
    if args.json:
        _emit(args, _json({
            "artifact_id": args.id, "direction": direction, "hops": args.hops,
            "artifacts": [trace.artifact_json(g, a) for a in sorted(g.artifacts)],
            "executions": [trace.execution_json(g, e) for e in g.topological_executions()],
            "events": [{"execution_id": e.execution_id, "artifact_id": e.artifact_id, "key": e.key,
                        "kind": "input" if e.is_input else "output"} for e in g.edges]}))
    elif args.format == "dot":
        _emit(args, render.dot(g, title))
    elif args.format == "html":
        _emit(args, render.html(g, title, render.graph_text(g, title)))
    else:
        _emit(args, render.graph_text(g, title))
    return EXIT_OK


def cmd_diff(args) -> int:
    from lineage import render, runs

    settings, store = _open(args)
    diff = mlmd.with_retry(lambda: runs.diff_runs(store, settings.pipeline_name, args.run_a, args.run_b,
                                                  with_metrics=not args.no_metrics))
    _emit(args, _json(diff) if args.json else render.diff_text(diff))
    return EXIT_OK


def _guarded(command):
    def run(args) -> int:
        _quiet_libraries()
        try:
            return command(args)
        except mlmd.StoreUnavailable as exc:
            print(f"tfxops lineage: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except mlmd.MetadataError as exc:
            print(f"tfxops lineage: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except ValueError as exc:
            print(f"tfxops lineage: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return run


# ------------------------------------------------------------------ parser
def _positive(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "lineage", help="where a model came from, what a run did, what changed (reads ML Metadata)",
        description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="lineage_command", required=True, metavar="{runs,model,artifact,diff}")

    def output_options(p, graph: bool):
        add_common_options(p)
        p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
        if graph:
            p.add_argument("--format", choices=FORMATS, default="text",
                           help="text tree (default), Graphviz dot, or a self-contained HTML page")
        p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    p = sub.add_parser("runs", help="pipeline runs, newest first, with each component's outcome")
    output_options(p, graph=False)
    p.add_argument("--limit", type=_positive, default=20, help="at most this many runs (default 20)")
    p.set_defaults(func=_guarded(cmd_runs))

    p = sub.add_parser("model", help="a pushed model's chain back to its data (default: the one serving now)")
    output_options(p, graph=True)
    p.add_argument("version", nargs="?", default="serving",
                   help="pushed version, or 'serving' (default): the highest version in the push directory")
    p.add_argument("--no-metrics", action="store_true", help="skip reading TFMA's evaluation files")
    p.set_defaults(func=_guarded(cmd_model))

    p = sub.add_parser("artifact", help="the lineage subgraph around any artifact id")
    output_options(p, graph=True)
    p.add_argument("id", type=int, help="artifact id (shown as #N by `lineage model`, in `lineage runs --json`)")
    p.add_argument("--upstream", action="store_true", help="only what it was made from")
    p.add_argument("--downstream", action="store_true", help="only what was made from it")
    p.add_argument("--hops", type=_positive, default=4,
                   help="how far to walk; each artifact<->execution step is one hop: 1 = the executions "
                        "that made/read it, 2 = also their other artifacts (default 4, max 100)")
    p.set_defaults(func=_guarded(cmd_artifact))

    p = sub.add_parser("diff", help="what differs between two runs: data, code, configuration, schema, metrics")
    output_options(p, graph=False)
    p.add_argument("run_a", help="run id (or an unambiguous prefix; see `lineage runs`)")
    p.add_argument("run_b", help="run id (or an unambiguous prefix)")
    p.add_argument("--no-metrics", action="store_true", help="skip reading TFMA's evaluation files")
    p.set_defaults(func=_guarded(cmd_diff))
