"""`tfxops compile`: the pipeline `tfxops run` runs, as a KFP v2 spec for Vertex AI
and Kubeflow Pipelines, with no path of this machine in it.

The slow contract test (`make test-slow`) executes the compiled container commands
locally, in dependency order, twice: the first job pushes a model, the second
judges its new candidate against it."""
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.utils import import_utils

from core import features as F
from core.config import PROJECT_ROOT
from core.pushdir import existing_versions
from pipeline.baseline import BASELINE_SOURCE_URI, BASELINE_VERSION
from pipeline.pipeline import NODE_ORDER
from tests.conftest import E2E_OVERRIDES, REPO, SMALL_ROWS, write_rows
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
    # the Evaluator: TFX's with the empty-baseline rule and the fairness gate, whose settings it carries
    assert executor_class("Evaluator") == "pipeline.fairness.FairnessGatedEvaluatorExecutor"
    gate = tasks["Evaluator"]["inputs"]["parameters"]["fairness_gate"]["runtimeValue"]["constant"]
    assert json.loads(gate)["features"] == ["payment_type", "pickup_community_area"]
    assert not [label for label, e in executors.items() if "resolver" in e and "container" not in e]
    # the attributions: of the Trainer's model on CsvExampleGen's examples, a custom type, waited for by the Pusher
    assert (producer("FeatureAttributor", "model"), producer("FeatureAttributor", "examples")) == \
        ("Trainer", "CsvExampleGen")
    assert "FeatureAttributor" in tasks["Pusher"]["dependentTasks"]
    outputs = spec["components"][tasks["FeatureAttributor"]["componentRef"]["name"]]["outputDefinitions"]
    assert "tfxops.FeatureAttributions" in outputs["artifacts"]["attributions"]["artifactType"]["instanceSchema"]
    # the input domain: from the training statistics and the curated schema, a custom type, read by the Pusher
    assert (producer("InputDomainGen", "statistics"), producer("InputDomainGen", "schema")) == \
        ("StatisticsGen", "ImportSchemaGen")
    assert producer("Pusher", "input_domain") == "InputDomainGen"
    # the trusted holdout: its own ExampleGen over the data root, judged against the served model, read by the Pusher
    assert tasks["TrustedHoldoutExampleGen"]["inputs"]["parameters"]["input_base"]["runtimeValue"]["constant"] == DATA
    assert (producer("HoldoutEvaluator", "examples"), producer("HoldoutEvaluator", "baseline_model")) == \
        ("TrustedHoldoutExampleGen", "baseline_model_resolver")
    assert executor_class("HoldoutEvaluator") == "pipeline.holdout.HoldoutEvaluatorExecutor"
    assert producer("Pusher", "holdout_blessing") == "HoldoutEvaluator"


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
    (["--target", "vertex", "--image", IMAGE, "--pipeline-root", ROOT,
      "--set", 'beam_args=["--temp_location=/tmp/x"]'], "beam_args --temp_location=/tmp/x is a path on this machine"),
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


def test_an_output_that_cannot_be_written_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    for output in (tmp_path / "a-file" / "spec.json", tmp_path):   # under a file; a directory
        code = _compile(tmp_path, "--target", "kubeflow", "--image", IMAGE, "--pipeline-root", ROOT,
                        "--output", str(output))
        err = capsys.readouterr().err
        assert code == 2 and f"cannot write the spec to --output {output}" in err, err
        assert "Traceback" not in err


@pytest.mark.parametrize("how", ["--set", "environment"])
def test_the_portable_runner_setting_compiles_with_the_pipelines_own_beam_args(tmp_path, capsys, monkeypatch, how):
    """beam_runner=portable starts services on this machine: the spec gets beam_args as they are."""
    output = tmp_path / "spec.json"
    runner = ["--set", "beam_runner=portable"] if how == "--set" else []
    if how == "environment":
        monkeypatch.setenv("TFXOPS_BEAM_RUNNER", "portable")
    code = _compile(tmp_path, "--target", "kubeflow", "--image", IMAGE, "--pipeline-root", ROOT,
                    "--output", str(output), "--set", 'beam_args=["--runner=DataflowRunner"]', *runner)
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    text = output.read_text()
    assert "--runner=DataflowRunner" in text
    assert "PortableRunner" not in text and "TFXOPS_PORTABLE" not in text


def test_a_uri_home_compiles(tmp_path, capsys):
    """compile discards the metadata connection, so a gs:// home (SQLite's file a URI) is fine."""
    output = tmp_path / "spec.json"
    code = cli.main(["compile", "--home", "gs://tfxops-test-bucket/home", "--target", "kubeflow", "--image", IMAGE,
                     "--pipeline-root", ROOT, "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    assert "metadata.sqlite" not in output.read_text()


def test_every_custom_artifact_type_imports_as_the_container_entrypoint_imports_it(compiled):
    """TFX's KFP v2 entrypoint imports a custom type's schema title as a class path; a
    title that does not import fails the task that reads or writes that artifact."""
    _, document = compiled["kubeflow"]
    titles = set(re.findall(r"title: (tfxops\.\w+)", json.dumps(document)))
    assert {"tfxops.ModelCard", "tfxops.FeatureAttributions", "tfxops.InputDomain"} <= titles
    for title in titles:
        artifact_class = import_utils.import_class_by_path(title)
        assert artifact_class.TYPE_NAME == title
    with pytest.raises(ImportError):
        import_utils.import_class_by_path("tfxops.NoSuchArtifact")


# ------------------------------------------------- the compiled commands, executed
# A local stand-in for what a KFP launcher does with each task: the executor input
# (the `{{$}}` of the container arguments) from the task's parameters and its
# producers' output artifacts, the ExampleGen driver (`preCacheCheck`) first, then
# the container command; tasks in dependency order. The bucket is a local directory
# and the image's /app the repository (as a bind mount would make them).
def _in_dependency_order(tasks) -> list:
    done, order = set(), []
    while len(order) < len(tasks):
        ready = sorted(t for t in tasks if t not in done and set(tasks[t].get("dependentTasks", [])) <= done)
        assert ready, "the DAG has a cycle"
        order += ready
        done |= set(ready)
    return order


def _executor_input(spec, task, produced, task_root) -> dict:
    task_spec = spec["root"]["dag"]["tasks"][task]
    component = spec["components"][task_spec["componentRef"]["name"]]
    parameters = {k: v["runtimeValue"]["constant"] for k, v in task_spec["inputs"].get("parameters", {}).items()}
    inputs = {k: {"artifacts": [produced[(a["taskOutputArtifact"]["producerTask"],
                                          a["taskOutputArtifact"]["outputArtifactKey"])]]}
              for k, a in task_spec["inputs"].get("artifacts", {}).items()}
    outputs = {k: {"artifacts": [{"name": f"{task}-{k}", "uri": f"{task_root}/{k}", "type": d["artifactType"],
                                  "metadata": {}}]}
               for k, d in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
    return {"inputs": {"parameterValues": parameters, "artifacts": inputs},
            "outputs": {"artifacts": outputs, "outputFile": f"{task_root}/executor_output.json"}}


def _execute(container, executor_input, log) -> None:
    for step in ([container["lifecycle"]["preCacheCheck"]] if "lifecycle" in container else []) + [container]:
        command = [sys.executable if part == "python" else part for part in step["command"]]
        args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in step["args"]]
        result = subprocess.run(command + args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, TF_USE_LEGACY_KERAS="1"), timeout=900)
        assert result.returncode == 0, f"{' '.join(command)} failed: see {log.name}"


def _run_compiled(spec, root) -> dict:
    """Every task of ``spec`` in dependency order; the artifacts they produced."""
    produced = {}
    os.makedirs(root)
    with open(os.path.join(root, "tasks.log"), "w") as log:
        for task in _in_dependency_order(spec["root"]["dag"]["tasks"]):
            executor_input = _executor_input(spec, task, produced, f"{root}/tasks/{task}")
            label = spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]]["executorLabel"]
            _execute(spec["deploymentSpec"]["executors"][label]["container"], executor_input, log)
            with open(executor_input["outputs"]["outputFile"]) as handle:
                written = json.load(handle).get("artifacts", {})
            for key, declared in executor_input["outputs"]["artifacts"].items():
                # the launcher keeps the declared name, type and uri; the executor adds metadata
                [artifact] = declared["artifacts"]
                for update in written.get(key, {}).get("artifacts", []):
                    artifact["metadata"].update(update.get("metadata", {}))
                produced[(task, key)] = artifact
    return produced


@pytest.mark.slow
def test_the_compiled_commands_run_in_dependency_order_and_push_a_model(tmp_path, taxi_rows):
    bucket = tmp_path / "bucket"
    write_rows(bucket / "data" / "data.csv", taxi_rows[:SMALL_ROWS], F.CSV_COLUMNS)
    output = tmp_path / "pipeline.json"
    code = _compile(tmp_path, "--target", "kubeflow", "--image", IMAGE, "--pipeline-root", "gs://bucket/root",
                    "--data", "gs://bucket/data", "--output", str(output), "--set", "serving_dir=gs://bucket/serving",
                    *[f"--set={k}={v}" for k, v in E2E_OVERRIDES.items()])
    assert code == 0
    spec = json.loads(output.read_text().replace("gs://bucket/", f"{bucket}/").replace('"/app/', f'"{REPO}/'))
    produced = _run_compiled(spec, str(tmp_path / "first"))

    assert produced[("baseline_model_resolver", "baseline")]["metadata"][BASELINE_VERSION] == ""
    blessing = produced[("Evaluator", "blessing")]
    assert blessing["metadata"].get("blessed") == 1, blessing
    [version] = existing_versions(str(bucket / "serving" / "taxi"))
    assert (bucket / "serving" / "taxi" / str(version) / "saved_model.pb").is_file()
    assert produced[("Pusher", "pushed_model")]["metadata"].get("pushed") == 1

    # a second job (its own task directories, so a new candidate): judged against the served model
    produced = _run_compiled(spec, str(tmp_path / "second"))
    baseline = produced[("baseline_model_resolver", "baseline")]["metadata"]
    assert baseline[BASELINE_VERSION] == str(version)
    assert baseline[BASELINE_SOURCE_URI] == f"{tmp_path}/first/tasks/Trainer/model"
