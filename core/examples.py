"""Rows <-> tf.Example, encoded exactly as CsvExampleGen encodes a CSV row.

An empty cell becomes a feature with an empty value list (not an absent feature),
ints go to int64_list, floats to float_list, strings to bytes_list. The schema,
the serving client and monitoring all use this one encoding.
"""
import csv
import math
from typing import Dict, Iterable, Iterator, List, Optional

import tensorflow as tf

from core import features as F


def _is_missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def row_to_example(row: Dict[str, object], columns: Optional[List[str]] = None) -> tf.train.Example:
    """A tf.Example from a dict of raw values (strings from a CSV, or typed values)."""
    example = tf.train.Example()
    feature_map = example.features.feature
    for column in columns or [c for c in F.CSV_COLUMNS if c in row]:
        kind = F.column_type(column)
        value = row.get(column)
        feature = feature_map[column]
        if kind == "int":
            feature.int64_list.value.extend([] if _is_missing(value) else [int(float(value))])
        elif kind == "float":
            feature.float_list.value.extend([] if _is_missing(value) else [float(value)])
        else:
            feature.bytes_list.value.extend(
                [] if _is_missing(value) or value == b""
                else [value if isinstance(value, bytes) else str(value).encode()])
    return example


def example_to_row(example: tf.train.Example) -> Dict[str, object]:
    """The inverse: feature name -> single value (None when the list is empty)."""
    row = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        value = values[0] if values else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        row[name] = value
    return row


def read_csv_rows(path: str) -> Iterator[Dict[str, str]]:
    with open(path, newline="") as handle:
        yield from csv.DictReader(handle)


def write_tfrecord(examples: Iterable[tf.train.Example], path: str) -> int:
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
            count += 1
    return count
