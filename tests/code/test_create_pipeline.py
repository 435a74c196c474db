"""create_pipeline takes explicit arguments (any orchestrator can call it); the
runner's pipeline_arguments maps the settings to them."""
import json

from core import config
from pipeline.pipeline import NODE_ORDER, create_pipeline
from pipeline.runner import pipeline_arguments


def test_the_settings_reach_the_components(tmp_path):
    settings = config.load({"home": str(tmp_path), "train_steps": "7", "gate_severities": "ERROR,WARNING"},
                           environ={})
    pipeline = create_pipeline(**pipeline_arguments(settings, "/data/spans"))
    nodes = {node.id: node for node in pipeline.components}
    assert set(nodes) == set(NODE_ORDER)
    assert pipeline.pipeline_info.pipeline_name == settings.pipeline_name
    assert pipeline.pipeline_info.pipeline_root == str(settings.pipeline_root_path)
    assert nodes["CsvExampleGen"].exec_properties["input_base"] == "/data/spans"
    assert json.loads(nodes["DataGate"].exec_properties["severities"]) == ["ERROR", "WARNING"]
    assert '"num_steps": 7' in nodes["Trainer"].exec_properties["train_args"]
    assert str(settings.model_push_dir) in nodes["Pusher"].exec_properties["push_destination"]
    assert pipeline.metadata_connection_config.sqlite.filename_uri == str(settings.metadata_file)
