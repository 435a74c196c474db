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
"""
import argparse
import json
import sys

from core.env import set_process_environment

set_process_environment()   # before anything below imports TensorFlow

from core import config  # noqa: E402
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from  # noqa: E402
from lineage import cli as lineage_cli  # noqa: E402
from monitoring import cli as monitoring_cli  # noqa: E402
from pipeline import compile as pipeline_compile  # noqa: E402
from serving import cli as serving_cli  # noqa: E402
from serving import verify_cli  # noqa: E402
from tfxops import audit_cli  # noqa: E402


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfxops", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the TFX pipeline locally on Beam")
    add_common_options(run)
    run.add_argument("--data", help="directory of training CSV files (default: bundled taxi data)")
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
    compile_spec.add_argument("--image", required=True,
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except config.ConfigError as exc:
        print(f"tfxops: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tfxops: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
