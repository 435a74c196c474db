"""Which model the Evaluator compares the candidate with: the model being served.

``BaselineModelResolver`` is a component (not a TFX ``Resolver`` node), between
the Trainer and the Evaluator. It reads the push directory the Pusher writes to
and hands the Evaluator the newest version there that was not pushed from the
candidate itself (the push marker, ``core.pushdir.MARKER``, names the model each
version came from), copied into its own Model artifact. When there is none (the
first run, or only the candidate is served), its output holds no model and
``BaselineAwareEvaluator`` evaluates without a baseline (TFX then skips the
change thresholds, as it does for a pipeline without a baseline).

Why a component. TFX's ``KubeflowV2DagRunner`` (Vertex AI, Kubeflow Pipelines)
compiles only two resolver strategies, ``LatestArtifactStrategy`` and
``LatestBlessedModelStrategy``, into fixed metadata queries that cannot look at
the candidate. With the latest blessed model as baseline, a rerun on unchanged
data and code finds the candidate itself (blessed last time): the Evaluator's
inputs change, its cache misses, and the model is judged against itself and
pushed again. A component is compiled like any other (a container task that
runs this module's code on every orchestrator), and its only input is the
candidate, so:

* a rerun on unchanged data and code: the Trainer is cached, so is this
  component (same candidate, same push directory setting), and with it the
  Evaluator and the Pusher; nothing is pushed;
* a candidate is never judged against itself: versions pushed from it are
  skipped, whatever the cache holds.

Trade-off: the baseline is what is served (the newest version, what a ``latest``
server loads), not an MLMD query over blessed models: a model that was blessed
but never published (its push failed) is not a baseline, a version published by
another tool is; the baseline is copied once per new candidate into the pipeline
root (lineage sees the copy, whose custom properties name the version and the
model it came from); and the push directory must be readable from the
component's container (a ``gs://`` URI on Vertex and Kubeflow).
"""
from typing import Optional

from tfx import types
from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_component_specs
from tfx.utils import path_utils

from core import storage
from core.pushdir import MARKER, existing_versions, read_marker

# Custom properties of the baseline artifact.
BASELINE_VERSION = "baseline_version"          # the served version copied ("" if none)
BASELINE_SOURCE_URI = "baseline_model_uri"     # the Model artifact that version was pushed from


def served_baseline(serving_model_dir: str, candidate_uri: str) -> Optional[str]:
    """The newest version under ``serving_model_dir`` not pushed from the model at
    ``candidate_uri`` (its push marker names another model, or it has none); None if
    there is none."""
    for version in sorted(existing_versions(serving_model_dir), reverse=True):
        marker = read_marker(storage.join(serving_model_dir, str(version))) or {}
        if marker.get("model_uri") != candidate_uri:
            return str(version)
    return None


def holds_model(model: types.Artifact) -> bool:
    """Whether a Model artifact holds a SavedModel (a baseline with no version has none)."""
    path = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
    return storage.exists(storage.join(path, "saved_model.pb"))


@tfx.dsl.components.component
def BaselineModelResolver(
        candidate: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
        baseline: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model],
        serving_model_dir: tfx.dsl.components.Parameter[str]):
    """The served model the candidate is judged against, copied into ``baseline``
    (left empty when no served version was pushed from another model)."""
    version = served_baseline(serving_model_dir, candidate.uri)
    baseline.set_string_custom_property(BASELINE_VERSION, version or "")
    if version is None:
        return
    source = storage.join(serving_model_dir, version)
    baseline.set_string_custom_property(
        BASELINE_SOURCE_URI, str((read_marker(source) or {}).get("model_uri") or ""))
    storage.copy_tree(source, path_utils.serving_model_dir(baseline.uri), skip=[MARKER])


class BaselineAwareEvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator executor; a baseline artifact holding no model counts as no
    baseline (change thresholds skipped, as TFX does without one)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        key = standard_component_specs.BASELINE_MODEL_KEY
        baselines = input_dict.get(key) or []
        if baselines and not holds_model(baselines[0]):
            input_dict = {name: value for name, value in input_dict.items() if name != key}
        super().Do(input_dict, output_dict, exec_properties)


class BaselineAwareEvaluator(tfx.components.Evaluator):
    """``tfx.components.Evaluator`` with ``BaselineAwareEvaluatorExecutor``."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(BaselineAwareEvaluatorExecutor)
