"""The server's out-of-domain check (``out_of_domain_action``): the rows of a call
against the input domain of the version that answers it (``core.domain``, loaded
with the version by ``serving.models``).

* ``reject``: on the request path, before the model runs (``DomainCheck.check_feeds``,
  ``check_examples``): a call with a value outside the domain is refused with
  ``OutOfDomain``, INVALID_ARGUMENT (HTTP 400) naming the features only (the value
  and the allowed domain go to the server log, at most one line a second: the domain
  is what the model was trained on, nothing a caller needs); the refusal is counted
  per feature and logged as rejected, its record marked with the features
  (``core.request_log``).
* ``log``: on the log writer's thread, as the record is built (``DomainCheck.logged``):
  the logged request's rows are checked, each feature out of domain is counted and
  the record is marked. The request path does not look at any row. Only the calls
  the log samples are checked (``log_sample_rate``), none when the log is off.
* ``off``: nothing is checked.

A version pushed without a domain (before the pipeline wrote one) is not checked.
Each serialized tf.Example is first read on the wire (``in_domain``: its feature
entries, each value seen before in the domain costing one set lookup); only a row
that is not certainly in the domain is parsed and checked value by value, so the
marks, counts and refusals are those of the value-by-value check.

Behind the logging proxy (``serving.grpc_proxy``), TF Serving loads the versions and
the proxy marks its gRPC records as ``log`` does (``VersionDomains``: the domain of the
version that answered, read once from the push directory when the proxy can see it);
the proxy never refuses a call, and its REST half does not mark (TF Serving's REST
answer does not say which version answered).
Rows that are not tf.Examples are left to the model to refuse.

Metric: ``OUT_OF_DOMAIN_COUNT{model_name,feature}``: calls with a value of
``feature`` outside the domain (answered and marked, or refused).
"""
import functools
import logging
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tensorflow.core.example import example_pb2, feature_pb2

from core import domain as domain_lib
from core import storage
from core.domain import DomainError, InputDomain, Violation, read_domain
from core.examples import input_examples
from core.request_log import DT_STRING
from serving import metrics as M
from serving.access import ThrottledLog
from serving.errors import ServingError

log = logging.getLogger("tfxops.serving")
COLUMNAR_MIN_ROWS = 12      # from this many rows, decoding them column-wise costs less
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64 = 1, 2, 3, 9     # tensorflow DataType wire values (and DT_STRING)
_as_feature = feature_pb2.Feature.FromString     # a tf.Example's bytes read as a Feature (``in_domain``)
_VALUE_FIELDS = {DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val",
                 DT_STRING: "string_val", DT_INT64: "int64_val"}


class OutOfDomain(ServingError):
    """INVALID_ARGUMENT: a call with values outside the version's input domain;
    ``features`` names every feature out of domain. The message names the features
    only: the domain itself (what the model was trained on) goes to the server log."""

    def __init__(self, violations: Sequence[Violation]):
        self.features: Tuple[str, ...] = tuple(v.feature for v in violations)
        super().__init__("INVALID_ARGUMENT", (
            f"{', '.join(self.features)}: outside the values the model was trained on "
            f"(out_of_domain_action={domain_lib.REJECT}). Send values like those it was trained "
            f"on, or ask its owners to retrain it on data that has them."))


class DomainCheck:
    """What ``out_of_domain_action`` asks of the server, and its counter."""

    def __init__(self, action: str, metrics: M.Metrics, model_name: str):
        self.rejects = action == domain_lib.REJECT
        self.logs = action == domain_lib.LOG
        self.action = action
        self.metrics = metrics
        self.model_name = model_name
        self._refusals = ThrottledLog("out of domain: refused")

    def for_model(self, model_name: str) -> "DomainCheck":
        """The same check, counting under another model's name (several models served)."""
        return DomainCheck(self.action, self.metrics, model_name)

    def check_feeds(self, found: InputDomain, feeds: Mapping[str, Iterable]) -> None:
        """``OutOfDomain`` when a predict call's tensors hold a value outside ``found``."""
        self._refuse(feed_violations(found, feeds))

    def check_examples(self, found: InputDomain, serialized: Sequence[bytes]) -> None:
        """``OutOfDomain`` when a classify/regress call's tf.Examples hold one."""
        self._refuse(row_violations(found, serialized))

    def _refuse(self, violations: List[Violation]) -> None:
        if violations:
            self.count(v.feature for v in violations)
            first = violations[0]
            self._refusals.warning("model %s: %s value %s, allowed %s", self.model_name,
                                   first.feature, first.value, first.allowed)
            raise OutOfDomain(violations)

    def logged(self, found: InputDomain, kind: str, request) -> Tuple[str, ...]:
        """The features of an answered call's ``request`` (a predict, classify or regress
        request, or its bytes) outside ``found``, counted (the log writer's thread)."""
        features = tuple(v.feature for v in request_violations(found, kind, request))
        self.count(features)
        return features

    def count(self, features: Iterable[str]) -> None:
        for feature in features:
            self.metrics.inc(M.OUT_OF_DOMAIN_COUNT, (("model_name", self.model_name), ("feature", feature)))


class VersionDomains:
    """The input domains of a push directory's versions, each read once (kept for the
    last ``MAX_VERSIONS`` versions asked about), for the proxy's log writer thread."""
    MAX_VERSIONS = 16

    def __init__(self, check: DomainCheck, model_name: str, base_path: str):
        self.check, self.model_name, self.base_path = check, model_name, base_path
        self._found: Dict[int, Optional[InputDomain]] = {}

    def marked(self, kind: str, model_name: str, version: Optional[int], request) -> Tuple[str, ...]:
        """The features of an answered ``request`` outside the domain of the version
        that answered it, counted; () when not checked (another model, no domain)."""
        if not self.check.logs or model_name != self.model_name or version is None:
            return ()
        if version not in self._found:
            if len(self._found) >= self.MAX_VERSIONS:
                self._found.clear()
            self._found[version] = self._read(version)
        found = self._found[version]
        return () if found is None else self.check.logged(found, kind, request)

    def _read(self, version: int) -> Optional[InputDomain]:
        try:
            return read_domain(storage.join(self.base_path, str(version)))
        except (DomainError, OSError) as exc:
            log.warning("version %s is not checked for out-of-domain inputs: %s", version, exc)
            return None


# ------------------------------------------------------------------ rows of a call
def row_violations(found: InputDomain, serialized: Sequence[bytes]) -> List[Violation]:
    """One ``Violation`` per feature out of domain in any of the serialized tf.Examples.
    Rows whose feature entries are certainly in the domain (``in_domain``) are passed;
    the others are checked from ``COLUMNAR_MIN_ROWS`` rows decoded column-wise by
    tfx_bsl's decoder, else (or when the decoder refuses the rows) one parsed
    tf.Example at a time."""
    serialized = [row for row in serialized if not in_domain(found, row)]
    if not serialized:
        return []
    if len(serialized) >= COLUMNAR_MIN_ROWS:
        columns = _decoded_columns(found, serialized)
        if columns is not None:
            return found.column_violations(columns)
    parse, by_feature = example_pb2.Example.FromString, {}
    for row in serialized:
        try:
            example = parse(row)
        except Exception:  # noqa: BLE001 - not a tf.Example (or not bytes): the model refuses it
            continue
        for violation in found.violations(example):
            by_feature.setdefault(violation.feature, violation)
    if len(by_feature) < 2:
        return list(by_feature.values())
    return [by_feature[name] for name in found.names if name in by_feature]


def in_domain(found: InputDomain, row) -> bool:
    """Whether the serialized tf.Example ``row`` is certainly within ``found``, told from
    its feature-map entries as they are on the wire (``InputDomain.entries_in_domain``);
    False when not, or not sure. An Example is one field, ``features`` (1, a Features
    message), whose map entries are its field 1: parsed as a ``Feature``, whose
    ``bytes_list`` (1) holds a repeated ``bytes`` field 1, the same bytes give the
    entries unparsed, in one call. Only a row that is that one field and nothing else
    is read so (another field would take over the Feature's oneof)."""
    if not isinstance(row, bytes):
        return False
    if not row:
        return True                         # an empty Example: no feature
    if row[0] != 0x0A or _field_end(row) != len(row):
        return False
    try:
        entries = _as_feature(row).bytes_list.value
    except Exception:  # noqa: BLE001 - not a tf.Example: the exact check decides
        return False
    return found.entries_in_domain(entries)


def _field_end(row: bytes) -> int:
    """Where the length-delimited field starting at ``row[0]`` ends (-1: cut short)."""
    size = shift = 0
    for pos in range(1, min(len(row), 11)):
        size |= (row[pos] & 0x7F) << shift
        shift += 7
        if row[pos] < 0x80:
            return pos + 1 + size
    return -1


@functools.lru_cache(maxsize=None)
def _decoder():
    from tfx_bsl.coders import example_coder

    return example_coder.ExamplesToRecordBatchDecoder()


def _decoded_columns(found: InputDomain, serialized: Sequence[bytes]) -> Optional[Dict[str, Sequence]]:
    """The values of each of ``found``'s features in the rows, flat; None when the rows
    do not decode together (not tf.Examples, a feature of two types)."""
    import pyarrow as pa

    try:
        batch = _decoder().DecodeBatch(list(serialized))
    except Exception:  # noqa: BLE001 - checked one row at a time instead
        return None
    columns = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if name in found.strings or name in found.ranges:
            values = column.flatten()
            numeric = pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
            columns[name] = values.to_numpy(zero_copy_only=False) if numeric else values.to_pylist()
    return columns


def feed_violations(found: InputDomain, feeds: Mapping[str, Iterable]) -> List[Violation]:
    """A predict call's tensors (alias -> values): one tensor per feature (``serving_raw``)
    checked as columns, one string tensor as serialized tf.Examples."""
    if any(alias in found.strings or alias in found.ranges for alias in feeds):
        return found.column_violations(feeds)
    if len(feeds) == 1:
        (values,) = feeds.values()
        rows = values.ravel().tolist() if hasattr(values, "ravel") else list(values)
        if rows and isinstance(rows[0], bytes):
            return row_violations(found, rows)
    return []


def request_violations(found: InputDomain, kind: str, request) -> List[Violation]:
    """The violations of a logged request message (or its bytes) of ``kind``."""
    if isinstance(request, bytes):
        request = _request_types()[kind].FromString(request)
    if kind != "predict":
        return row_violations(found, input_examples(request.input))
    inputs = request.inputs
    rows = _example_rows(found, inputs) if len(inputs) == 1 else None
    if rows is not None:
        return row_violations(found, rows)
    return feed_violations(found, {alias: _tensor_values(inputs[alias]) for alias in inputs})


def _example_rows(found: InputDomain, inputs) -> Optional[Sequence[bytes]]:
    """The serialized tf.Examples of a predict request's one input (``inputs``: its
    map, one entry) when it is a string tensor of them; None when it is anything else
    (``feed_violations`` reads it)."""
    (alias,) = inputs
    tensor = inputs[alias]
    if alias in found.strings or alias in found.ranges or tensor.dtype != DT_STRING or tensor.tensor_content:
        return None
    return tensor.string_val


@functools.lru_cache(maxsize=None)
def _request_types() -> Dict[str, type]:
    from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

    return {"predict": predict_pb2.PredictRequest, "classify": classification_pb2.ClassificationRequest,
            "regress": regression_pb2.RegressionRequest}


def _tensor_values(tensor) -> Sequence:
    """A TensorProto's values, flat: its typed repeated field, or its decoded content."""
    if tensor.tensor_content or tensor.dtype not in _VALUE_FIELDS:
        import tensorflow as tf

        return tf.make_ndarray(tensor).ravel()
    return getattr(tensor, _VALUE_FIELDS[tensor.dtype])

