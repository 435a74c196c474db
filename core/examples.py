"""Rows <-> tf.Example, encoded exactly as CsvExampleGen encodes a CSV row.

An empty cell becomes a feature with an empty value list (not an absent feature),
ints go to int64_list, floats to float_list, strings to bytes_list. The schema,
the serving client and monitoring all use this one encoding.

The rows of REST request bodies (JSON) become tf.Examples here too
(``json_body_rows``, ``json_rows_to_examples``): how a refused REST call is logged.
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


def input_examples(inp) -> List[bytes]:
    """The serialized tf.Examples of a classify/regress ``Input`` (``input_pb2.Input``),
    each merged with the list's context as TF Serving merges it: by concatenation, so
    the example's own features win. An empty ``Input`` has none."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in inp.example_list.examples]
    if kind == "example_list_with_context":
        context = inp.example_list_with_context.context.SerializeToString()
        return [context + e.SerializeToString() for e in inp.example_list_with_context.examples]
    return []


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


# ------------------------------------------------------------------ JSON rows (REST bodies)
MAX_FEATURE_NAME_CHARS = 256             # feature names of JSON rows come from callers


def json_body_rows(doc: dict) -> List:
    """The rows of a REST request body as a client sent them: ``instances``,
    columnar ``inputs`` (one row per index of equally long lists) or the
    ``examples`` of classify/regress (merged with their ``context``)."""
    if isinstance(doc.get("instances"), list):
        return doc["instances"]
    inputs = doc.get("inputs")
    if isinstance(inputs, list):
        return inputs
    if isinstance(inputs, dict) and inputs:
        if not any(isinstance(v, list) for v in inputs.values()):
            return [inputs]                          # one row of scalars
        lengths = {len(v) if isinstance(v, list) else -1 for v in inputs.values()}
        if len(lengths) == 1 and -1 not in lengths:
            return [{k: v[i] for k, v in inputs.items()} for i in range(lengths.pop())]
    examples = doc.get("examples")
    if isinstance(examples, list):
        context = doc.get("context") if isinstance(doc.get("context"), dict) else {}
        return [dict(context, **e) if isinstance(e, dict) else e for e in examples]
    return []


def json_rows_to_examples(rows: List, dtypes: Optional[Dict[str, int]] = None) -> List[bytes]:
    """Serialized tf.Examples of JSON rows as a client sent them (objects of
    feature -> value, or ``{"b64": serialized example}``), typed by ``dtypes``
    (input alias -> DataType, from the signature) where known, else by the JSON
    value. A feature the row lacks (or sends as null) is absent from its example;
    an empty string is an empty list, as CsvExampleGen encodes an empty cell; a
    value of another type than the signature's is kept as it came, so the
    monitor's schema checks see it. Rows that are neither are left out."""
    import base64

    out = []
    for row in rows:
        if isinstance(row, dict) and set(row) == {"b64"} and isinstance(row["b64"], str):
            try:
                out.append(base64.b64decode(row["b64"], validate=True))
            except ValueError:
                pass
            continue
        if not isinstance(row, dict):
            continue
        example = tf.train.Example()
        for name, value in row.items():
            _json_feature(example.features.feature, str(name)[:MAX_FEATURE_NAME_CHARS], value,
                          (dtypes or {}).get(name))
        out.append(example.SerializeToString())
    return out


def _json_feature(features, name: str, value, dtype: Optional[int]) -> None:
    if value is None:
        return                           # as a missing key
    values = value if isinstance(value, list) else [value]
    if any(v is None or isinstance(v, (list, dict)) for v in values):
        return                           # nested: nothing a tf.Example feature holds
    present = [v for v in values if v != ""]
    kind = _feature_kind(present, dtype)
    try:
        if kind == "float":
            features[name].float_list.value.extend([float(v) for v in present])
            return
        if kind == "int":
            features[name].int64_list.value.extend([int(v) for v in present])
            return
    except (OverflowError, ValueError):      # e.g. 2**70: no tf.Example number holds it
        pass
    features[name].bytes_list.value.extend(
        [v.encode("utf-8") if isinstance(v, str) else str(v).encode() for v in present])


def _feature_kind(present: List, dtype: Optional[int]) -> str:
    """float | int | bytes: the signature's type when every value fits it, else
    the type the JSON values have."""
    from tensorflow.core.framework import types_pb2 as T

    ints = all(isinstance(v, int) for v in present)             # bools too: 0/1
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if dtype in (T.DT_FLOAT, T.DT_DOUBLE) and numbers:
        return "float"
    if dtype in (T.DT_INT64, T.DT_INT32) and ints:
        return "int"
    if dtype == T.DT_STRING and all(isinstance(v, str) for v in present):
        return "bytes"
    if present and ints:
        return "int"
    return "float" if present and numbers else "bytes"
