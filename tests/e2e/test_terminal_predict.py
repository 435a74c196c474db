"""`tfxops predict` writes its tf.Examples without TensorFlow (serving.client.serialize_rows,
protobuf's wire format): what it sends must be, parsed by TensorFlow, exactly the example
core.examples.row_to_example builds (CsvExampleGen's encoding) for every bundled row and for
the values a hand-written JSON file may hold."""
import math

import pytest
import tensorflow as tf

from core import features as F
from core.examples import row_to_example
from serving.client import serialize_row, serialize_rows
from tests.conftest import read_rows


def _tensorflows(row, columns):
    return row_to_example(row, [c for c in columns if c in row])


def test_every_bundled_row_encodes_as_tensorflow_encodes_it():
    rows = read_rows()
    columns = list(F.SERVING_FEATURES)
    sent = serialize_rows(rows)
    assert len(sent) == len(rows) > 10_000
    different = [i for i, (row, data) in enumerate(zip(rows, sent))
                 if tf.train.Example.FromString(data) != _tensorflows(row, columns)]
    assert different == []


@pytest.mark.parametrize("row", [
    {"fare": None, "trip_miles": math.nan, "company": b"x", "payment_type": b"", "trip_seconds": "7.9"},
    {"fare": 1e39, "trip_miles": -1e39, "company": "Taxi Affiliation Services é", "trip_start_timestamp": "-1"},
    {"fare": "inf", "trip_miles": 3, "pickup_community_area": -3, "trip_start_hour": 2 ** 40},
    {"fare": "", "payment_type": "", "pickup_census_tract": ""},        # empty cells: empty lists, present
])
def test_edge_values_encode_as_tensorflow_encodes_them(row):
    columns = [c for c in F.SERVING_FEATURES if c in row]
    assert tf.train.Example.FromString(serialize_row(row, columns)) == _tensorflows(row, columns)


def test_a_value_of_the_wrong_type_is_named_by_its_column():
    with pytest.raises(ValueError, match=r"^trip_start_hour: 'noon' is not an int \(the feature's type\)$"):
        serialize_rows([{"trip_start_hour": "noon"}])
    with pytest.raises(ValueError, match=r"^fare: 'cheap' is not a float"):
        serialize_rows([{"fare": "cheap"}])
