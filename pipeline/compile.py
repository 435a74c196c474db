"""``tfxops compile``: the pipeline ``tfxops run`` runs, as a KFP v2 pipeline spec
for Vertex AI Pipelines or Kubeflow Pipelines.

The spec is built by TFX's ``KubeflowV2DagRunner`` from the same
``pipeline.pipeline.create_pipeline`` and the same arguments
(``pipeline.runner.pipeline_arguments``), with the locations a cluster can reach
in place of this machine's:

* the pipeline root is the URI given (``gs://`` for Vertex);
* the data root and the serving directory are the settings' URIs
  (``--data``/``data_dir``, ``serving_dir``), else ``<pipeline root>/data`` and
  ``<pipeline root>/serving_model``; the trusted holdout (``pipeline.holdout``) is
  ``trusted_holdout_dir`` (a URI), else the data root;
* the schema and the model code travel in the image: the schema is the settings'
  file at the same place under the image's project root (``/app`` by default, as
  the Dockerfile installs the project), the model code the importable names
  ``preprocessing_fn``/``run_fn`` (the project is installed in the image);
* metadata: the orchestrator's own store (Vertex ML Metadata, Kubeflow's MLMD);
  the settings' metadata connection does not enter the spec;
* Beam: the local runner's arguments, i.e. ``beam_args`` as they are (a compiled
  pipeline's Beam runner comes from its own ``beam_args``, e.g.
  ``--runner=DataflowRunner``); ``beam_runner=portable`` starts services on this
  machine and does not apply. A ``beam_args`` value that is a local absolute path
  is refused: a cluster cannot reach it.

Targets: ``vertex`` writes a PipelineJob (the spec and its runtime config, the
pipeline root as ``gcsOutputDirectory``), what ``aiplatform.PipelineJob``
submits; ``kubeflow`` writes the PipelineSpec alone, the pipeline root as its
``defaultPipelineRoot`` (YAML for a ``.yaml``/``.yml`` file name, else JSON),
what a Kubeflow Pipelines v2 server uploads.
"""
import dataclasses
import json
import posixpath
from pathlib import Path
from typing import Dict, List, Optional

from core import storage
from core.config import PROJECT_ROOT, Settings

TARGETS = ("vertex", "kubeflow")
IMAGE_PROJECT_ROOT = "/app"       # where the image holds the project (schema/, modules/)
# schema version 2.1.0: the one kfp-pipeline-spec > 0.1.13 describes
USE_PIPELINE_SPEC_2_1 = True


class CompileError(ValueError):
    """Arguments or settings that cannot make a spec; the message says what to change."""


@dataclasses.dataclass
class CompiledPipeline:
    target: str
    output: str
    image: str
    pipeline_root: str
    data_root: str
    serving_model_dir: str
    schema_path: str
    tasks: List[str]


def image_schema_path(schema_path: str, image_project_root: str) -> str:
    """The schema inside the image: the settings' file at the same place under the
    image's project root; a URI stays as it is."""
    if storage.is_uri(schema_path):
        return schema_path
    try:
        relative = Path(schema_path).resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        raise CompileError(
            f"the schema {schema_path} is outside the project, so the image does not hold it: "
            f"put it under {PROJECT_ROOT / 'schema'} (and rebuild the image) or give a URI "
            "(--set schema_path=gs://...)") from None
    return posixpath.join(image_project_root, relative.as_posix())


def compiled_arguments(settings: Settings, pipeline_root: str, data_root: Optional[str] = None,
                       image_project_root: str = IMAGE_PROJECT_ROOT) -> Dict:
    """``create_pipeline``'s arguments for a cluster: ``pipeline_arguments`` with the
    pipeline root, data root, serving directory and schema a cluster reaches."""
    from pipeline.runner import pipeline_arguments

    data_root = data_root or (settings.data_dir if storage.is_uri(settings.data_dir)
                              else storage.join(pipeline_root, "data"))
    serving_model_dir = (settings.model_push_dir if storage.is_uri(settings.model_push_dir)
                         else storage.join(pipeline_root, "serving_model", settings.model_name))
    for name, value in (("--pipeline-root", pipeline_root), ("--data", data_root)):
        if not storage.is_uri(value):
            raise CompileError(f"{name} must be a URI the cluster reaches (gs://bucket/path, s3://...), "
                               f"not a path on this machine: {value}")
    _check_beam_args(settings.beam_args)
    arguments = pipeline_arguments(dataclasses.replace(settings, beam_runner="local"), data_root)
    arguments.update(pipeline_root=pipeline_root, data_root=data_root,
                     serving_model_dir=serving_model_dir,
                     schema_path=image_schema_path(settings.schema_path, image_project_root))
    arguments["trusted_holdout_dir"] = _holdout_root(settings, data_root)
    return arguments


def _holdout_root(settings: Settings, data_root: str) -> str:
    """The trusted holdout a cluster reads: ``trusted_holdout_dir`` (a URI), else the data root."""
    if not settings.trusted_holdout_dir:
        return data_root
    if not storage.is_uri(settings.trusted_holdout_dir):
        raise CompileError(f"trusted_holdout_dir must be a URI the cluster reaches (gs://bucket/path), "
                           f"not a path on this machine: {settings.trusted_holdout_dir}")
    return settings.trusted_holdout_dir


def compile_pipeline(settings: Settings, *, target: str, image: str, pipeline_root: str, output: str,
                     data_root: Optional[str] = None,
                     image_project_root: str = IMAGE_PROJECT_ROOT) -> CompiledPipeline:
    """Write the spec of the pipeline ``tfxops run`` runs to ``output`` (a path or a URI)."""
    _check_target(target, image, pipeline_root)
    arguments = compiled_arguments(settings, pipeline_root, data_root, image_project_root)
    job = pipeline_job(arguments, image)
    document = job if target == "vertex" else dict(job["pipelineSpec"], defaultPipelineRoot=pipeline_root)
    _write(document, output)
    return CompiledPipeline(
        target=target, output=output, image=image, pipeline_root=pipeline_root,
        data_root=arguments["data_root"], serving_model_dir=arguments["serving_model_dir"],
        schema_path=arguments["schema_path"], tasks=sorted(job["pipelineSpec"]["root"]["dag"]["tasks"]))


def pipeline_job(arguments: Dict, image: str) -> Dict:
    """The PipelineJob (as JSON) TFX's KubeflowV2DagRunner compiles from ``create_pipeline(**arguments)``."""
    try:
        from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
    except ImportError as exc:
        raise CompileError(f"TFX's Kubeflow V2 compiler cannot load ({exc}): install the pinned "
                           "kfp-pipeline-spec (pip install -c constraints.txt -e .)") from None
    from pipeline.pipeline import create_pipeline

    config = kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
        default_image=image, use_pipeline_spec_2_1=USE_PIPELINE_SPEC_2_1)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(config=config)
    return runner.run(create_pipeline(**arguments), write_out=False)


def _check_beam_args(beam_args: List[str]) -> None:
    """No ``beam_args`` value may be a path on this machine (``--temp_location=/tmp/x``)."""
    for argument in beam_args:
        name, equals, value = str(argument).partition("=")
        if equals and value.startswith("/"):
            raise CompileError(f"beam_args {name}={value} is a path on this machine, which the cluster "
                               f"does not reach: give a URI ({name}=gs://bucket/path)")


def _check_target(target: str, image: str, pipeline_root: str) -> None:
    if target not in TARGETS:
        raise CompileError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}")
    if not image or not image.strip():
        raise CompileError("an image is needed (--image REGISTRY/tfxops:TAG): the image built from "
                           "the project's Dockerfile, which every task runs")
    if target == "vertex" and not pipeline_root.startswith("gs://"):
        raise CompileError(f"Vertex AI Pipelines needs a gs:// pipeline root, got {pipeline_root}")


def _write(document: Dict, output: str) -> None:
    """``document`` to ``output``; a ``CompileError`` naming the file when it cannot
    be written (TFX's file layer raises TensorFlow's ``OpError``, a local disk ``OSError``)."""
    import tensorflow as tf
    import yaml
    from tfx.dsl.io import fileio

    parent = posixpath.dirname(output) if storage.is_uri(output) else str(Path(output).resolve().parent)
    try:
        if parent and not fileio.exists(parent):
            fileio.makedirs(parent)
        with fileio.open(output, "w") as handle:
            if output.endswith((".yaml", ".yml")):
                yaml.safe_dump(document, handle, sort_keys=True)
            else:
                json.dump(document, handle, indent=1, sort_keys=True)
    except (OSError, tf.errors.OpError) as exc:
        reason = getattr(exc, "message", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise CompileError(f"cannot write the spec to --output {output}: {reason}") from None
