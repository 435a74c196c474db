"""DataGate: stop the pipeline before Transform and Trainer when the data has anomalies.

TFX's ExampleValidator only records anomalies; the run goes on and may train and
push a model on broken data. DataGate reads ExampleValidator's output for every
split and fails (the run stops, MLMD records the failure) when any anomaly has a
severity listed in ``severities``, naming each feature and the reason.
"""
import json
import os
from typing import Dict

from tfx import v1 as tfx
from tfx.types import standard_artifact_utils
from tfx.utils import io_utils
from tensorflow_metadata.proto.v0 import anomalies_pb2

from core.anomalies import describe

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """The new data breaks the schema; the message lists features and reasons."""


def read_anomalies(anomalies) -> Dict[str, anomalies_pb2.Anomalies]:
    """ExampleValidator's Anomalies proto for each split of an ExampleAnomalies artifact."""
    result = {}
    for split in standard_artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(standard_artifact_utils.get_split_uri([anomalies], split),
                            ANOMALIES_FILE)
        proto = anomalies_pb2.Anomalies()
        proto.ParseFromString(io_utils.read_bytes_file(path))
        result[split] = proto
    return result


@tfx.dsl.components.component
def DataGate(anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
             severities: tfx.dsl.components.Parameter[str] = '["ERROR"]'):
    """Fails with DataAnomaliesError when the anomalies include a blocking one."""
    lines = describe(read_anomalies(anomalies), json.loads(severities))
    if lines:
        raise DataAnomaliesError(
            "the data does not match the schema; training stopped before Transform:\n  "
            + "\n  ".join(lines)
            + "\n  Fix the data; or, where the new values are legitimate, update the curated "
              "schema (schema/schema.pbtxt, schema/make_schema.py) and commit it.")
