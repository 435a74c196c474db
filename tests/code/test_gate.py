"""DataGate's verdict on real TFDV anomalies."""
import pytest
import tensorflow_data_validation as tfdv

from pipeline.gate import describe
from core import config
from core.examples import row_to_example, write_tfrecord
from tests.conftest import read_rows


def _anomalies(tmp_path, rows):
    path = str(tmp_path / "x.tfrecord")
    write_tfrecord((row_to_example(r) for r in rows), path)
    schema = tfdv.load_schema_text(config.load(environ={}).schema_path)
    return tfdv.validate_statistics(tfdv.generate_statistics_from_tfrecord(path), schema)


@pytest.fixture(scope="module")
def rows():
    return read_rows()[:600]


def test_clean_data_passes(tmp_path, rows):
    assert describe({"train": _anomalies(tmp_path, rows)}, ["ERROR"]) == []


def test_each_broken_feature_is_named_with_its_reason(tmp_path, rows):
    broken = [dict(r) for r in rows]
    for row in broken[::4]:
        row["payment_type"] = "Bitcoin"
        row["trip_start_month"] = "14"
    lines = describe({"train": _anomalies(tmp_path, broken)}, ["ERROR"])
    text = "\n".join(lines)
    assert "train: feature 'payment_type': ERROR" in text and "Bitcoin" in text
    assert "train: feature 'trip_start_month': ERROR" in text
    assert len(lines) == 2
    # a gate that only blocks on other severities lets the data through
    assert describe({"train": _anomalies(tmp_path, broken)}, ["WARNING"]) == []
