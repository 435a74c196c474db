"""The InfraValidator's place in the pipeline, the Pusher's reading of its blessing and
the settings of warm-up and infra validation (issue 17 part 2); fast, no pipeline run."""
import pytest
from tfx.types import standard_artifacts

from core import config
from pipeline import infra_validation as iv
from pipeline.pipeline import create_pipeline
from pipeline.runner import pipeline_arguments


def _nodes(tmp_path, **overrides):
    settings = config.load(dict({"home": str(tmp_path)}, **overrides), environ={})
    return {node.id: node for node in create_pipeline(**pipeline_arguments(settings, "/data")).components}


def test_the_infra_validator_judges_what_the_evaluator_blessed_before_the_pusher(tmp_path):
    nodes = _nodes(tmp_path, warmup_examples="5", infra_validation_timeout_seconds="42")
    validator, pusher = nodes[iv.COMPONENT_ID], nodes["Pusher"]
    assert validator.inputs["model"].producer_component_id == "Trainer"
    assert validator.inputs["examples"].producer_component_id == "CsvExampleGen"
    assert validator.inputs["model_blessing"].producer_component_id == "Evaluator"
    assert validator.exec_properties["warmup_examples"] == 5 and validator.exec_properties["timeout_seconds"] == 42
    assert pusher.inputs[iv.INFRA_BLESSING_KEY].producer_component_id == iv.COMPONENT_ID
    assert pusher.inputs["examples"].producer_component_id == "CsvExampleGen"
    assert pusher.exec_properties["warmup_examples"] == 5


def test_infra_validation_off_leaves_the_validator_out_and_keeps_the_warmup_file(tmp_path):
    nodes = _nodes(tmp_path, infra_validation="false")
    assert iv.COMPONENT_ID not in nodes
    assert nodes["Pusher"].inputs.get(iv.INFRA_BLESSING_KEY) is None
    assert nodes["Pusher"].exec_properties["warmup_examples"] == config.Settings.warmup_examples


@pytest.mark.parametrize("name, value, words", [
    ("warmup_examples", "-1", "'warmup_examples' must be between 0 and 250"),
    ("warmup_examples", "251", "'warmup_examples' must be between 0 and 250"),
    ("infra_validation_timeout_seconds", "0", "'infra_validation_timeout_seconds' must be > 0"),
])
def test_settings_out_of_range_are_refused_naming_the_setting(tmp_path, name, value, words):
    with pytest.raises(config.ConfigError, match=words):
        config.load({"home": str(tmp_path), name: value}, environ={})


def _artifacts(blessed: int, reason: str = "", judged_uri: str = "/models/7"):
    model = standard_artifacts.Model()
    model.uri = "/models/7"
    blessing = standard_artifacts.InfraBlessing()
    blessing.set_int_custom_property(iv.BLESSED_KEY, blessed)
    blessing.set_string_custom_property(iv.REASON_KEY, reason)
    blessing.set_string_custom_property(iv.MODEL_URI_KEY, judged_uri)
    return {"model": [model], iv.INFRA_BLESSING_KEY: [blessing]}


def test_the_pusher_pushes_only_what_the_infra_validator_blessed():
    refused = "infra validation: the candidate did not load in tfxops serve (state END): DATA_LOSS: ..."
    assert iv.pusher_refusal(_artifacts(1)) is None
    assert iv.pusher_refusal(_artifacts(0, refused)) == refused
    assert iv.pusher_refusal(_artifacts(0)) == "infra validation: not blessed"
    # a blessing of another model blesses nothing here
    assert "judged the model at /models/6" in iv.pusher_refusal(_artifacts(1, judged_uri="/models/6"))
    # wired but missing: refused; not wired (infra_validation off): the Pusher decides as before
    assert iv.pusher_refusal({"model": [], iv.INFRA_BLESSING_KEY: []}) == \
        "infra validation: no infra blessing for this model"
    assert iv.pusher_refusal({"model": []}) is None
    # not run because the Evaluator refused: the Evaluator's refusal is the reason, as before
    assert iv.pusher_refusal(_artifacts(0, f"{iv.NOT_RUN}: the Evaluator did not bless the model")) is None
