"""The out-of-domain check on the request-log writer's thread reads each logged row's
feature entries on the wire and remembers the entries it found in the domain
(``serving.domain_check.in_domain``, ``core.domain.EntryCheck``). These tests hold it
to the straightforward check (each row parsed as a tf.Example, ``InputDomain.violations``)
on the session pipeline's pushed domain: the same marks, the same metrics, the same
bytes in the log files, for real rows and for rows crafted to slip past the shortcut
(values out of domain, other wire layouts of the same Example, duplicate keys, bytes
that are no Example)."""
import math
import struct

import pytest
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import predict_pb2

from core import domain as domain_lib
from core import features as F
from core import request_log
from core.protowire import length_delimited, varint
from serving import metrics as M
from serving.client import predict_request, serialize_rows
from serving.domain_check import DomainCheck, in_domain, row_violations
from serving.log_writer import RequestLogger
from tests.conftest import read_rows

VERSION = 7


@pytest.fixture(scope="module")
def pushed_domain(first_run):
    found = domain_lib.read_domain(first_run.pushed_path)
    assert found is not None, f"the pushed version {first_run.pushed_path} has no {domain_lib.DOMAIN_FILE}"
    return found


def straightforward(found, row: bytes):
    """The features of ``row`` outside ``found``: the row parsed, every feature looked at."""
    try:
        example = example_pb2.Example.FromString(row)
    except Exception:  # noqa: BLE001 - not a tf.Example: nothing to mark (the model refuses it)
        return ()
    return tuple(v.feature for v in found.violations(example))


def entry(name: str, feature: bytes, key_first: bool = True) -> bytes:
    key, value = length_delimited(1, name.encode()), length_delimited(2, feature)
    return key + value if key_first else value + key


def example(*entries: bytes, extra: bytes = b"") -> bytes:
    return length_delimited(1, b"".join(length_delimited(1, e) for e in entries)) + extra


def floats(*values) -> bytes:
    return length_delimited(2, length_delimited(1, b"".join(struct.pack("<f", v) for v in values)))


def ints(*values) -> bytes:
    return length_delimited(3, length_delimited(1, b"".join(varint(v) for v in values)))


def strings(*values: bytes) -> bytes:
    return length_delimited(1, b"".join(length_delimited(1, v) for v in values))


def crafted_rows(found, row: bytes):
    """Rows meant to slip an out-of-domain value (or a different row) past the shortcut."""
    high = found.training["trip_miles"][1] * 100
    allowed_payment = sorted(found.strings["payment_type"])[0]
    ok_miles = entry("trip_miles", floats(1.0))
    return [
        example(entry("payment_type", strings(b"Bitcoin"))),
        example(entry("trip_miles", floats(high))),
        example(entry("fare", floats(math.nan))),
        example(entry("trip_seconds", ints(-10 ** 6))),                   # a 10-byte varint
        example(entry("trip_seconds", ints(10 ** 9))),
        example(entry("trip_miles", strings(b"12.5"))),                   # a string for a number
        example(entry("payment_type", floats(1.0))),                      # a number for a string
        example(entry("payment_type", strings(allowed_payment, b"Bitcoin"))),   # the 2nd value bad
        example(entry("trip_miles", floats(1.0, high))),
        example(entry("trip_miles", floats(high)), ok_miles),             # map: the last one wins
        example(ok_miles, entry("trip_miles", floats(high))),
        example(entry("trip_miles", floats(high), key_first=False)),      # value before key
        example(entry("trip_miles", length_delimited(2, b"\x0d" + struct.pack("<f", high)))),  # unpacked
        example(entry("payment_type", strings(b"x" * 300))),              # multi-byte lengths
        example(entry("trip_miles", floats(high)), extra=length_delimited(7, b"unknown")),
        example(entry("trip_miles", floats(high)), extra=length_delimited(2, b"")),   # unknown to
        example(entry("trip_miles", floats(high)), extra=length_delimited(3, b"")),   # Example, not to Feature
        length_delimited(1, example(entry("trip_miles", floats(high)))[2:]) * 2,   # Features twice
        row + example(entry("payment_type", strings(b"Bitcoin"))),         # a 2nd Features, merged
        example(entry("payment_type", strings(b""))),                     # empty: missing, in domain
        example(entry("trip_miles", b"")), example(),  b"",
        row[:-3], b"\xff\x01garbage",                                      # no tf.Example at all
    ]


def test_marks_match_the_straightforward_check(pushed_domain):
    """Real rows, then the same rows again (entries remembered), then crafted rows:
    every row marked exactly as the straightforward check marks it."""
    rows = serialize_rows([{k: v for k, v in r.items() if k != F.LABEL_KEY} for r in read_rows()[:1500]])
    crafted = crafted_rows(pushed_domain, rows[0])
    mixed = rows + rows[:200] + crafted + rows[:50]
    for row in mixed:
        expected = straightforward(pushed_domain, row)
        assert tuple(v.feature for v in row_violations(pushed_domain, [row])) == expected, row
        if expected:
            assert not in_domain(pushed_domain, row), f"out of domain, taken as in domain: {row!r}"
    marked = [straightforward(pushed_domain, row) for row in mixed]
    # all but 7 crafted rows are out of domain: the good duplicate last, the empty ones, no Example
    assert sum(1 for row in crafted if straightforward(pushed_domain, row)) == len(crafted) - 7
    assert sum(1 for row in rows if in_domain(pushed_domain, row)) > 0.9 * len(rows), \
        "the shortcut takes most real rows"
    # one call of many rows (decoded column-wise past COLUMNAR_MIN_ROWS): the same features
    union = {f for m in marked for f in m}
    assert [v.feature for v in row_violations(pushed_domain, mixed)] == \
        [name for name in pushed_domain.names if name in union]


def test_log_files_and_metrics_match(pushed_domain, tmp_path):
    """The records the writer writes for logged predict calls (the request as wire
    bytes, as the gRPC front end hands it over): byte for byte what the straightforward
    marks give, and the out-of-domain counter counts the same features."""
    rows = serialize_rows([{k: v for k, v in r.items() if k != F.LABEL_KEY} for r in read_rows()[:300]])
    calls = [[row] for row in rows[:200]] + [[row] for row in crafted_rows(pushed_domain, rows[0])] \
        + [rows[200:232], rows[232:240] + crafted_rows(pushed_domain, rows[1])[:3]]
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "taxi"
    metrics = M.Metrics()
    check = DomainCheck(domain_lib.LOG, metrics, "taxi")
    logger = RequestLogger(tmp_path / "logs", rotate_records=10 ** 6, metrics=metrics).start()
    expected, counts = b"", {}
    for i, rows_of_call in enumerate(calls):
        request = predict_request("taxi", rows_of_call).SerializeToString()
        marks = sorted({f for row in rows_of_call for f in straightforward(pushed_domain, row)},
                       key=pushed_domain.names.index)
        for feature in marks:
            counts[feature] = counts.get(feature, 0) + 1
        expected += request_log.tfrecord_frame(request_log.answered_record(
            "predict", "taxi", VERSION, "serving_default", f"r{i}", 1.7e9, request, response, "c", marks))
        logger.submit(lambda i=i, request=request: request_log.answered_record(
            "predict", "taxi", VERSION, "serving_default", f"r{i}", 1.7e9, request, response, "c",
            check.logged(pushed_domain, "predict", request)))
    logger.close()
    written = b"".join(path.read_bytes() for path in sorted((tmp_path / "logs").iterdir()))
    assert written == expected
    assert counts, "some calls are out of domain"
    for feature, count in counts.items():
        assert metrics.value(M.OUT_OF_DOMAIN_COUNT, (("model_name", "taxi"), ("feature", feature))) == count


def test_remembered_entries_are_bounded_and_never_admit_a_bad_value(pushed_domain):
    """With room for 8 entries the check keeps at most 8, and a value out of domain
    never becomes one of them however often it is sent."""
    by_key = {name.encode(): (pushed_domain.strings.get(name), *pushed_domain.ranges.get(name, (0.0, 0.0)))
              for name in pushed_domain.names}
    check = domain_lib.EntryCheck(by_key)
    check.MAX_KNOWN = 8
    rows = serialize_rows([{k: v for k, v in r.items() if k != F.LABEL_KEY} for r in read_rows()[:100]])
    bad = example(entry("payment_type", strings(b"Bitcoin")))
    for row in rows + [bad] * 5 + rows:
        entries = feature_pb2.Feature.FromString(row).bytes_list.value
        assert check.all_in_domain(entries) == (straightforward(pushed_domain, row) == ()), row
        assert len(check.known) <= 8
    assert not check.all_in_domain(feature_pb2.Feature.FromString(bad).bytes_list.value)
