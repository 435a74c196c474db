"""Infra validation before push (issue 17 part 2): the InfraValidator loads the
candidate in ``tfxops serve`` and sends it its warm-up requests; a candidate that
fails is not pushed, its InfraBlessing (blessed=0, the reason) is in MLMD, and the
run summary says why.

The pipeline's first run (the session's) blessed and pushed its model through the
InfraValidator. The broken candidates are built from that model, not trained again,
and judged by a pipeline of the real InfraValidator and AtomicPusher over imported
artifacts (the candidate, the run's Examples, an Evaluator blessing), recorded in an
MLMD store of their own and summarized by ``tfxops run``'s own summary code."""
import json
import shutil
import time
from pathlib import Path

import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tfx import v1 as tfx

from core import config, features as F, mlmd
from core.pushdir import existing_versions, read_marker
from core.warmup import WARMUP_FILE
from pipeline import infra_validation as iv
from pipeline import runner
from pipeline import warmup as warmup_lib
from pipeline.pusher import AtomicPusher


def test_the_first_run_was_infra_validated_before_its_push(first_run, e2e_settings):
    store = mlmd.open_store(e2e_settings)
    run = mlmd.find_run(store, e2e_settings.pipeline_name)
    executions = {n.node_id: n for n in mlmd.run_executions(store, run, e2e_settings.pipeline_name)}
    [blessing] = executions[iv.COMPONENT_ID].outputs["blessing"]
    assert mlmd.custom(blessing, iv.BLESSED_KEY) == 1 and mlmd.custom(blessing, iv.REASON_KEY) == ""
    assert mlmd.custom(blessing, iv.REQUESTS_KEY) == 6 > 0
    assert mlmd.custom(blessing, iv.MODEL_URI_KEY) == read_marker(first_run.pushed_path)["model_uri"]
    assert (Path(blessing.uri) / iv.BLESSED_FILE).is_file() and (Path(blessing.uri) / iv.SERVER_LOG).is_file()
    # the Pusher took it, as TFX's Pusher takes an infra blessing, and pushed the warm-up file with the model
    pusher_inputs = mlmd.input_artifacts(store, executions["Pusher"].execution.id)
    assert [a.id for a in pusher_inputs[iv.INFRA_BLESSING_KEY]] == [blessing.id]
    assert (Path(first_run.pushed_path) / WARMUP_FILE).is_file()


# ------------------------------------------------------------------ broken candidates
def _corrupt_variables(model_dir: Path) -> None:
    data = next((model_dir / "Format-Serving" / "variables").glob("variables.data-*"))
    data.write_bytes(bytes(255 - b for b in data.read_bytes()))


def _signature_that_fails_on_its_inputs(model_dir: Path) -> None:
    """serving_raw declares 'fare' a string; its graph still takes a float."""
    path = model_dir / "Format-Serving" / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    saved.meta_graphs[0].signature_def[F.RAW_SIGNATURE].inputs["fare"].dtype = types_pb2.DT_STRING
    path.write_bytes(saved.SerializeToString())


CANDIDATES = {"corrupt variables": _corrupt_variables,
              "signature failing on its warm-up inputs": _signature_that_fails_on_its_inputs,
              "intact": lambda model_dir: None}      # the control: the same model, unbroken


@pytest.fixture(scope="module")
def judged(tmp_path_factory, first_run, e2e_settings):
    """name -> (RunSummary, InfraBlessing in MLMD, versions pushed so far) of that candidate,
    judged when a test first asks for it (each is a pipeline with a tfxops serve subprocess,
    so the default suite judges the corrupt one only; the others run with -m slow)."""
    home = tmp_path_factory.mktemp("infra_home")
    settings = config.load({"home": str(home)}, environ={})
    marker = read_marker(first_run.pushed_path)
    examples = warmup_lib.examples_for_model(mlmd.open_store(e2e_settings), marker["model_artifact_id"])
    done = {}

    def judge(name: str):
        if name not in done:
            candidate = home / "candidates" / name.replace(" ", "_")
            shutil.copytree(marker["model_uri"], candidate)
            CANDIDATES[name](candidate)
            started_ms = int(time.time() * 1000)
            tfx.orchestration.LocalDagRunner().run(_judging_pipeline(settings, str(candidate), examples.uri))
            summary = runner.summarize(settings, [], 1.0, None, home / "run.log", started_ms)
            store = mlmd.open_store(settings)
            run = mlmd.find_run(store, settings.pipeline_name)
            executions = {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name)}
            done[name] = (summary, executions[iv.COMPONENT_ID].outputs["blessing"][0],
                          existing_versions(str(settings.model_push_dir)))
        return done[name]
    return judge


def _judging_pipeline(settings, candidate: str, examples_uri: str):
    standard = tfx.types.standard_artifacts
    model = tfx.dsl.Importer(source_uri=candidate, artifact_type=standard.Model, reimport=True).with_id("candidate")
    examples = tfx.dsl.Importer(source_uri=examples_uri, artifact_type=standard.Examples,
                                properties={"split_names": json.dumps(["train", "eval"])}).with_id("examples")
    blessing = tfx.dsl.Importer(source_uri=str(Path(settings.home) / "evaluator_blessing"),
                                artifact_type=standard.ModelBlessing, reimport=True,
                                custom_properties={"blessed": 1}).with_id("evaluator_blessing")
    check = iv.InfraCheck.from_settings(settings)
    validator = iv.InfraValidator(
        model=model.outputs["result"], examples=examples.outputs["result"],
        model_blessing=blessing.outputs["result"], model_name=check.model_name,
        warmup_examples=check.warmup_examples, timeout_seconds=check.timeout_seconds).with_id(iv.COMPONENT_ID)
    pusher = AtomicPusher(
        model=model.outputs["result"], model_blessing=blessing.outputs["result"],
        infra_blessing=validator.outputs["blessing"], examples=examples.outputs["result"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=str(settings.model_push_dir)))).with_id("Pusher")
    return tfx.dsl.Pipeline(pipeline_name=settings.pipeline_name, pipeline_root=str(settings.pipeline_root_path),
                            components=[model, examples, blessing, validator, pusher], enable_cache=False,
                            metadata_connection_config=mlmd.connection_config(settings))


@pytest.mark.parametrize("name, words", [
    ("corrupt variables", "the candidate did not load in tfxops serve (state END)"),
    pytest.param("signature failing on its warm-up inputs", f"signature '{F.RAW_SIGNATURE}') failed",
                 marks=pytest.mark.slow),
])
def test_a_broken_candidate_is_refused_recorded_and_not_pushed(judged, name, words):
    summary, blessing, versions = judged(name)
    # the InfraBlessing in MLMD: TFX's property blessed=0, the reason, the server's log kept with it
    assert mlmd.custom(blessing, iv.BLESSED_KEY) == 0
    reason = mlmd.custom(blessing, iv.REASON_KEY)
    assert reason.startswith("infra validation: ") and words in reason, reason
    assert (Path(blessing.uri) / iv.NOT_BLESSED_FILE).is_file()
    assert f"the server's log: {Path(blessing.uri) / iv.SERVER_LOG}" in reason
    assert "tfxops-infra-" not in reason and "\n" not in reason    # one line; no path of the removed copy
    # not pushed; the summary (text and --json) says why
    assert versions == []
    assert not summary.pushed and summary.not_pushed_reason == reason
    assert f"pushed: nothing ({reason})" in runner.render(summary)
    assert json.loads(summary.to_json())["not_pushed_reason"] == reason


@pytest.mark.slow
def test_the_same_candidate_unbroken_is_blessed_and_pushed_with_its_warmup_file(judged):
    summary, blessing, versions = judged("intact")
    assert mlmd.custom(blessing, iv.BLESSED_KEY) == 1 and (Path(blessing.uri) / iv.BLESSED_FILE).is_file()
    assert summary.pushed and summary.not_pushed_reason is None and versions == [int(summary.pushed_version)]
    assert (Path(summary.pushed_path) / WARMUP_FILE).is_file()
