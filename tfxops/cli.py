"""The ``tfxops`` command line.

    tfxops run [--data DIR] [--home DIR] [--set key=value ...] [--json]
    tfxops config [--set key=value ...]    (settings and every derived path)
    tfxops compile --target vertex|kubeflow --image IMAGE --pipeline-root URI --output FILE
    tfxops serve | predict       (serving/cli.py)
    tfxops verify [VERSION]      (serving/verify_cli.py)
    tfxops monitor               (monitoring/cli.py)
    tfxops lineage ...           (lineage/cli.py)
    tfxops audit [--verify]      (tfxops/audit_cli.py)
    tfxops demo

Exit codes: 0 success, 1 the pipeline failed, 2 bad input or settings (nothing
was run or pushed).

What libraries print (TensorFlow's start-up lines, deprecation and absl warnings,
gRPC) goes to <home>/logs/tfxops.log for every command (``core.env.library_output_to``;
a home that does not exist yet: <tmp>/tfxops-<uid>.log); ``tfxops run`` and
``tfxops demo`` keep their own logs as well. What tfxops says itself stays on the terminal.
"""
import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

from core.env import library_log_path, library_output_to, set_process_environment

set_process_environment()   # before anything below imports TensorFlow

from core import config  # noqa: E402
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from  # noqa: E402
from lineage import cli as lineage_cli  # noqa: E402
from monitoring import cli as monitoring_cli  # noqa: E402
from pipeline import compile as pipeline_compile  # noqa: E402
from serving import cli as serving_cli  # noqa: E402
from serving import verify_cli  # noqa: E402
from tfxops import __version__  # noqa: E402
import tfxops.audit_cli as audit_cli  # noqa: E402  (not `from tfxops import`: that asks tfxops.__getattr__, which imports TFX)

# One example per command, shown under its --help (tests/e2e/test_terminal.py: every command has one).
EXAMPLES = {
    "run": ["tfxops run", "tfxops run --data data/taxi --home outputs --set train_steps=2000"],
    "config": ["tfxops config --home outputs", "tfxops config --set rest_port=9501"],
    "compile": ["tfxops compile --target vertex --image europe-docker.pkg.dev/p/r/tfxops:1 "
                "--pipeline-root gs://bucket/tfxops --output vertex.json"],
    "demo": ["tfxops demo", "tfxops demo --home /tmp/tfxops-demo"],
    "serve": ["tfxops serve --home outputs", "tfxops serve --port 9500 --rest_api_port 9501",
              "tfxops serve --proxy-to localhost:8601 --proxy-grpc-to localhost:8600"],
    "sync-models": ["tfxops sync-models --to /srv/models/taxi --once"],
    "predict": ["tfxops predict --rows 3", "tfxops predict --json rows.json --host 10.0.0.5 --port 8501",
                "tfxops predict --protocol grpc --port 8500 --output json"],
    "verify": ["tfxops verify", "tfxops verify 1795996758 --set model_integrity=require"],
    "monitor": ["tfxops monitor --home outputs", "tfxops monitor --dry-run --json",
                "tfxops monitor --watch 300", "tfxops monitor report --open"],
    "approve": ["tfxops approve --list", "tfxops approve 20261130T025754Z-a689e638"],
    "lineage": ["tfxops lineage model", "tfxops lineage runs --limit 5", "tfxops lineage diff RUN_A RUN_B"],
    "audit": ["tfxops audit --verify", "tfxops audit --action pushed --since 2026-11-01"],
    "promote": ["tfxops promote", "tfxops promote 1795996758 --model taxi"],
    "rollback": ["tfxops rollback", "tfxops rollback 1795996560"],
}


def cmd_config(args) -> int:
    settings = settings_from(args)
    values = settings.as_dict()
    values.update(settings.derived_paths())
    print(json.dumps(values, indent=2))
    return EXIT_OK


def cmd_run(args) -> int:
    from pipeline import preflight, runner

    settings = settings_from(args)
    try:
        # with --json, stdout carries the JSON document only; progress goes to stderr
        summary = runner.run_pipeline(settings, out=sys.stderr if args.json else sys.stdout)
    except preflight.PreflightError as exc:
        print(f"tfxops run: bad input: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary.to_json() if args.json else runner.render(summary))
    if not summary.ok:
        return EXIT_BAD_INPUT if summary.failed_node == "DataGate" else EXIT_FAILED
    if summary.audit_error:
        print(f"tfxops run: {summary.audit_error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_compile(args) -> int:
    try:
        compiled = pipeline_compile.compile_pipeline(
            settings_from(args), target=args.target, image=args.image, pipeline_root=args.pipeline_root,
            output=args.output, data_root=args.data, image_project_root=args.image_project_root)
    except pipeline_compile.CompileError as exc:
        print(f"tfxops compile: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"compiled for {compiled.target}: {compiled.output} ({len(compiled.tasks)} tasks, image {compiled.image})")
    print(f"  pipeline root: {compiled.pipeline_root}")
    print(f"  data (CSVs):   {compiled.data_root}")
    print(f"  pushed models: {compiled.serving_model_dir}")
    print(f"  schema:        {compiled.schema_path} (in the image)")
    return EXIT_OK


def cmd_demo(args) -> int:
    from tfxops import demo

    result = demo.run_demo(settings_from(args))
    return EXIT_OK if result["ok"] else EXIT_FAILED


def version_text() -> str:
    """tfxops' version and the versions of the stack it runs on (read from the
    installed packages' metadata: nothing is imported)."""
    stack = []
    for name, label in (("tfx", "TFX"), ("tensorflow", "TensorFlow")):
        try:
            stack.append(f"{label} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            stack.append(f"{label} not installed")
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"tfxops {__version__} ({', '.join(stack)}, Python {python})"


def add_examples(commands) -> None:
    """Each command's examples (``EXAMPLES``) under its --help."""
    for name, command in commands.choices.items():
        if name in EXAMPLES:
            command.formatter_class = argparse.RawDescriptionHelpFormatter
            command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfxops", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="tfxops: a TFX pipeline, a TF Serving-compatible server, a monitor that retrains, lineage.",
        epilog="every command: tfxops COMMAND --help (an example each).\n"
               "library output (TensorFlow's start-up lines, warnings) goes to <home>/logs/tfxops.log")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print tfxops' version and its stack's (TFX, TensorFlow, Python), then exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the TFX pipeline locally on Beam")
    add_common_options(run)
    run.add_argument("--data", metavar="DIR", help="directory of training CSV files (default: bundled taxi data)")
    run.add_argument("--runner", choices=config.BEAM_RUNNERS,
                     help="Beam runner of the Beam components (setting beam_runner; default local)")
    run.add_argument("--json", action="store_true",
                     help="print the summary as JSON on stdout (progress on stderr)")
    run.set_defaults(func=cmd_run)

    show_config = commands.add_parser("config", help="print the effective settings and every derived path")
    add_common_options(show_config)
    show_config.set_defaults(func=cmd_config)

    compile_spec = commands.add_parser(
        "compile", help="the pipeline `tfxops run` runs, as a KFP v2 spec for Vertex AI or Kubeflow Pipelines")
    add_common_options(compile_spec)
    compile_spec.add_argument("--target", required=True, choices=pipeline_compile.TARGETS,
                              help="vertex: a PipelineJob for Vertex AI Pipelines; "
                                   "kubeflow: a PipelineSpec for Kubeflow Pipelines v2")
    compile_spec.add_argument("--image", required=True, metavar="IMAGE",
                              help="the image every task runs (built from the project's Dockerfile)")
    compile_spec.add_argument("--pipeline-root", required=True, metavar="URI",
                              help="where runs write their artifacts, e.g. gs://bucket/tfxops")
    compile_spec.add_argument("--output", required=True, metavar="FILE",
                              help="the spec to write (.json, or .yaml/.yml)")
    compile_spec.add_argument("--data", metavar="URI",
                              help="the training CSVs (default: data_dir if a URI, else <pipeline-root>/data)")
    image_root = pipeline_compile.IMAGE_PROJECT_ROOT
    compile_spec.add_argument("--image-project-root", default=image_root, metavar="DIR",
                              help=f"where the image holds the project (schema/, modules/); default {image_root}")
    compile_spec.set_defaults(func=cmd_compile)

    demo = commands.add_parser("demo", help="the whole loop: train, serve, watch, retrain (fresh <home>/demo)")
    add_common_options(demo)
    demo.set_defaults(func=cmd_demo)

    for stage_cli in (serving_cli, verify_cli, monitoring_cli, lineage_cli, audit_cli):
        stage_cli.register(commands)
    add_examples(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with library_output_to(library_log_path(), prints_to_terminal=True):    # until the home is known
            settings = settings_from(args)
            with library_output_to(library_log_path(Path(settings.logs_path), Path(settings.home)),
                                   prints_to_terminal=True):
                return args.func(args)
    except config.ConfigError as exc:
        print(f"tfxops: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tfxops: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
