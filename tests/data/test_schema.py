"""The curated schema, the feature module and the bundled data agree."""

import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from core import features as F
from core import config
from core.examples import read_csv_rows, row_to_example, write_tfrecord
from tests.conftest import TAXI_CSV

TYPES = {"int": schema_pb2.INT, "float": schema_pb2.FLOAT, "string": schema_pb2.BYTES}


@pytest.fixture(scope="module")
def schema():
    return tfdv.load_schema_text(config.load(environ={}).schema_path)


def test_schema_and_feature_module_name_the_same_columns_and_types(schema):
    in_schema = {f.name: f.type for f in schema.feature}
    assert set(in_schema) == set(F.CSV_COLUMNS)
    for column in F.CSV_COLUMNS:
        assert in_schema[column] == TYPES[F.column_type(column)], column


def test_label_is_absent_in_serving(schema):
    assert set(schema.default_environment) == {"TRAINING", "SERVING"}
    assert list(tfdv.get_feature(schema, F.LABEL_KEY).not_in_environment) == ["SERVING"]


def test_important_features_have_skew_and_drift_comparators(schema):
    for name in F.SKEW_WATCHED_CATEGORICAL:
        feature = tfdv.get_feature(schema, name)
        assert feature.skew_comparator.infinity_norm.threshold > 0
        assert feature.drift_comparator.infinity_norm.threshold > 0
    for name in F.SKEW_WATCHED_NUMERIC:
        feature = tfdv.get_feature(schema, name)
        assert feature.skew_comparator.jensen_shannon_divergence.threshold > 0
        assert feature.drift_comparator.jensen_shannon_divergence.threshold > 0


def test_domains_are_set(schema):
    assert tfdv.get_feature(schema, "trip_start_hour").int_domain.max == 23
    assert "Cash" in tfdv.get_domain(schema, "payment_type").value


@pytest.fixture(scope="module")
def bundled_statistics(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stats") / "examples.tfrecord")
    count = write_tfrecord((row_to_example(r) for r in read_csv_rows(str(TAXI_CSV))), path)
    assert count == 15002
    return tfdv.generate_statistics_from_tfrecord(path)


def test_bundled_data_has_no_anomalies(schema, bundled_statistics):
    anomalies = tfdv.validate_statistics(bundled_statistics, schema, environment="TRAINING")
    assert dict(anomalies.anomaly_info) == {}


def test_serving_rows_without_label_have_no_anomalies(schema, tmp_path):
    path = str(tmp_path / "serving.tfrecord")
    rows = list(read_csv_rows(str(TAXI_CSV)))[:2000]
    write_tfrecord((row_to_example(r, F.SERVING_FEATURES) for r in rows), path)
    stats = tfdv.generate_statistics_from_tfrecord(path)
    serving = tfdv.validate_statistics(stats, schema, environment="SERVING")
    assert dict(serving.anomaly_info) == {}
    training = tfdv.validate_statistics(stats, schema, environment="TRAINING")
    assert F.LABEL_KEY in training.anomaly_info     # the label is required in training
