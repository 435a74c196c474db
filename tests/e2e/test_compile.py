"""`tfxops compile`: the pipeline `tfxops run` runs, as a KFP v2 spec for Vertex AI
and Kubeflow Pipelines, with no path of this machine in it."""
import json
import os
import re
import tempfile

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from core.config import PROJECT_ROOT
from pipeline.pipeline import NODE_ORDER
from tfxops import cli

IMAGE = "europe-west4-docker.pkg.dev/tfxops-test/pipelines/tfxops:1.0"
ROOT = "gs://tfxops-test-bucket/pipelines"
DATA = "gs://tfxops-test-bucket/data/taxi"
SERVING = "gs://tfxops-test-bucket/serving"


def _compile(tmp_path, *args):
    """`tfxops compile` in this process, with a fresh home; its exit code."""
    return cli.main(["compile", "--home", str(tmp_path / "home"), *args])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Both targets: {target: (path, document)}. The Kubeflow spec as YAML."""
    directory = tmp_path_factory.mktemp("compiled")
    documents = {}
    for target, name in (("vertex", "pipeline.json"), ("kubeflow", "pipeline.yaml")):
        output = directory / name
        code = cli.main(["compile", "--home", str(directory / "home"), "--target", target, "--image", IMAGE,
                         "--pipeline-root", ROOT, "--data", DATA, "--output", str(output),
                         "--set", f"serving_dir={SERVING}", "--set", "train_steps=7"])
        assert code == 0
        with open(output) as handle:
            documents[target] = (output, yaml.safe_load(handle))
    return documents


def _pipeline_spec(target, document) -> dict:
    return document["pipelineSpec"] if target == "vertex" else document


@pytest.mark.parametrize("target", ["vertex", "kubeflow"])
def test_the_spec_parses_strictly_and_loads_as_a_vertex_pipeline_job(compiled, target):
    path, document = compiled[target]
    spec = json_format.Parse(json.dumps(_pipeline_spec(target, document)), pipeline_spec_pb2.PipelineSpec())
    assert set(spec.root.dag.tasks) == set(NODE_ORDER)
    if target == "vertex":
        job = json_format.Parse(json.dumps(document), pipeline_spec_pb2.PipelineJob())
        assert job.runtime_config.gcs_output_directory == ROOT
    else:
        assert spec.default_pipeline_root == ROOT
    job = aiplatform.PipelineJob(display_name="tfxops", template_path=str(path), credentials=AnonymousCredentials(),
                                 project="tfxops-test", location="europe-west4")
    assert job._gca_resource.runtime_config.gcs_output_directory == ROOT


@pytest.mark.parametrize("target", ["vertex", "kubeflow"])
def test_the_spec_holds_the_image_modules_and_uris_and_no_local_path(compiled, target):
    _, document = compiled[target]
    spec = _pipeline_spec(target, document)
    text = json.dumps(document)
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    for expected in ("modules.transform.preprocessing_fn", "modules.trainer.run_fn",
                     "/app/schema/schema.pbtxt", DATA, f"{SERVING}/taxi"):
        assert expected in text, expected
    assert re.search(r"gs:/[^/]", text) is None           # no URI with its // collapsed
    for local in ("/work/", str(PROJECT_ROOT), tempfile.gettempdir() + "/", os.path.expanduser("~") + "/",
                  "metadata.sqlite"):
        assert local not in text, local
    assert '\\"num_steps\\": 7' in text                    # the settings reach the tasks


@pytest.mark.parametrize("target", ["vertex", "kubeflow"])
def test_the_dag_keeps_the_gate_the_baseline_and_the_push_edges(compiled, target):
    _, document = compiled[target]
    spec = _pipeline_spec(target, document)
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]

    def producer(task, key):
        return tasks[task]["inputs"]["artifacts"][key]["taskOutputArtifact"]["producerTask"]

    def executor_class(task):
        args = executors[spec["components"][task]["executorLabel"]]["container"]["args"]
        return args[args.index("--executor_class_path") + 1]

    assert "DataGate" in tasks["Transform"]["dependentTasks"]
    assert "Evaluator" in tasks["Pusher"]["dependentTasks"] and producer("Pusher", "model_blessing") == "Evaluator"
    # the baseline: the component that reads the served models, fed by the Trainer only,
    # and no metadata query (TFX resolver) anywhere
    assert producer("baseline_model_resolver", "candidate") == "Trainer"
    assert tasks["baseline_model_resolver"]["dependentTasks"] == ["Trainer"]
    assert executor_class("baseline_model_resolver") == "pipeline.baseline.BaselineModelResolver_Executor"
    serving = tasks["baseline_model_resolver"]["inputs"]["parameters"]["serving_model_dir"]
    assert serving["runtimeValue"]["constant"] == f"{SERVING}/taxi"
    assert f"{SERVING}/taxi" in json.dumps(tasks["Pusher"]["inputs"]["parameters"]["push_destination"])
    assert producer("Evaluator", "baseline_model") == "baseline_model_resolver"
    assert executor_class("Evaluator") == "pipeline.baseline.BaselineAwareEvaluatorExecutor"
    assert not [label for label, e in executors.items() if "resolver" in e and "container" not in e]


def test_defaults_come_from_the_pipeline_root(tmp_path, capsys):
    output = tmp_path / "spec.json"
    code = _compile(tmp_path, "--target", "kubeflow", "--image", IMAGE, "--pipeline-root", "s3://bucket/root/",
                    "--output", str(output))
    assert code == 0
    out = capsys.readouterr().out
    assert "s3://bucket/root/data" in out and "s3://bucket/root/serving_model/taxi" in out
    text = output.read_text()
    assert "s3://bucket/root/data" in text and "s3://bucket/root/serving_model/taxi" in text


@pytest.mark.parametrize("args, message", [
    (["--target", "airflow", "--image", IMAGE, "--pipeline-root", ROOT], "invalid choice: 'airflow'"),
    (["--target", "vertex", "--pipeline-root", ROOT], "--image"),
    (["--target", "vertex", "--image", " ", "--pipeline-root", ROOT], "an image is needed"),
    (["--target", "kubeflow", "--image", IMAGE, "--pipeline-root", "/tmp/root"], "--pipeline-root must be a URI"),
    (["--target", "vertex", "--image", IMAGE, "--pipeline-root", "s3://b/root"], "needs a gs:// pipeline root"),
    (["--target", "vertex", "--image", IMAGE, "--pipeline-root", ROOT, "--data", "/tmp/data"], "--data must be a URI"),
    (["--target", "vertex", "--image", IMAGE, "--pipeline-root", ROOT, "--set", "schema_path=/etc/schema.pbtxt"],
     "outside the project"),
])
def test_errors_a_user_can_act_on_exit_2(tmp_path, capsys, args, message):
    output = tmp_path / "spec.json"
    try:
        code = _compile(tmp_path, *args, "--output", str(output))
    except SystemExit as exit_:        # argparse: a usage message
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not output.exists()
