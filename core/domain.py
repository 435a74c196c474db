"""A model version's input domain: the values its training data had, per raw
feature, so that a request whose values fall outside (an unknown category, a
number far beyond the training range) can be counted, marked in the request log
or refused (``out_of_domain_action``).

What the domain holds, per raw feature the model reads (``DOMAIN_FEATURES``):

* a string feature: the set of allowed values. From the curated schema's
  ``string_domain`` when it has one for the feature (the full, reviewed list);
  else from the training split's statistics: TFDV keeps every distinct value in
  ``string_stats.rank_histogram`` only up to its bucket count (StatisticsGen's
  default: 1000; ``top_values`` keeps 20), so a feature with more distinct values
  (``string_stats.unique``) than buckets has no complete list there and is left
  unchecked, the reason in ``unchecked`` (add a ``string_domain`` to the schema to
  check it);
* a numeric feature: ``[low, high]``, the training split's ``[min, max]``
  widened on each side by ``margin`` (``out_of_domain_range_margin``) times its
  width (``max(|min|, |max|, 1)`` when min = max).

A missing value (no feature, an empty value list, an empty string) is never out
of domain; NaN is. A string sent for a numeric feature, or a number for a string
feature, is out of domain. Features the domain does not name are ignored.

The pipeline (``pipeline.domain``) writes the domain as JSON into each pushed
version, ``<version>/DOMAIN_FILE``, through a stager of the push (so a version's
integrity manifest covers it); the server loads it with the version
(``serving.models``), the monitor reads the marks the server leaves in the request
log. Files and protos only: no TensorFlow, no TFDV import.
"""
import dataclasses
import functools
import json
import math
import struct
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from core import features as F
from core import storage
from core.storage import Location

LOG, REJECT, OFF = "log", "reject", "off"
ACTIONS = (LOG, REJECT, OFF)                  # Settings.out_of_domain_action
DOMAIN_FILE = "assets.extra/input_domain.json"   # inside a pushed version
FORMAT = 1
# The raw features whose domain is kept: those the model reads. trip_start_timestamp
# moves past any training range as time goes on; pickup_census_tract is no model input.
DOMAIN_FEATURES: List[str] = [name for name in F.SERVING_FEATURES if name in F.MODEL_FEATURES]
MAX_VALUE_CHARS = 64                          # a refused value is quoted up to this length
MAX_ALLOWED_CHARS = 300                       # and the allowed domain described up to this
SCHEMA_SOURCE, STATISTICS_SOURCE = "schema", "statistics"


class DomainError(ValueError):
    """A domain file that cannot be read or is not a domain; the message names the file."""


def settings_problem(values: Mapping) -> Optional[str]:
    """What is wrong with the out-of-domain settings among ``values`` (None: nothing)."""
    if values.get("out_of_domain_action", LOG) not in ACTIONS:
        return (f"setting 'out_of_domain_action' must be one of {', '.join(ACTIONS)}, "
                f"got {values['out_of_domain_action']!r}")
    if not values.get("out_of_domain_range_margin", 0.0) >= 0:
        return "setting 'out_of_domain_range_margin' must be >= 0 (a fraction of the training range's width)"
    if not 0 <= values.get("alert_out_of_domain_rate", 0.0) <= 1:
        return "setting 'alert_out_of_domain_rate' must be between 0 and 1 (0: no alert)"
    return None


@dataclasses.dataclass(frozen=True)
class Violation:
    """One feature of one row outside the domain: the value as sent (quoted, bounded)
    and the allowed domain in words (bounded)."""
    feature: str
    value: str
    allowed: str


def shown(value) -> str:
    """A value a caller sent, quoted, at most ``MAX_VALUE_CHARS`` characters of it."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS]}... ({len(text) - MAX_VALUE_CHARS} more characters)"
    return repr(text) if isinstance(value, (bytes, str)) else text


@dataclasses.dataclass
class InputDomain:
    """Allowed values per string feature, ``(low, high)`` per numeric feature, and
    the features left unchecked with the reason."""
    strings: Dict[str, FrozenSet[bytes]]
    ranges: Dict[str, Tuple[float, float]]
    margin: float = 0.0
    unchecked: Dict[str, str] = dataclasses.field(default_factory=dict)
    sources: Dict[str, str] = dataclasses.field(default_factory=dict)     # feature -> SCHEMA/STATISTICS_SOURCE
    training: Dict[str, Tuple[float, float]] = dataclasses.field(default_factory=dict)   # numeric: train [min, max]

    # ------------------------------------------------ checking
    # Run once per logged or checked row: one loop over the features, no call per value.
    def out_of_domain(self, example) -> List[str]:
        """The features of a ``tf.train.Example`` whose values fall outside the domain."""
        return [v.feature for v in self.violations(example)]

    def violations(self, example) -> List[Violation]:
        """One ``Violation`` per feature of ``example`` outside the domain (its first bad value)."""
        found = []
        features = example.features.feature
        for name, allowed, low, high in self._plan:
            if name not in features:
                continue
            feature = features[name]
            kind = feature.WhichOneof("kind")
            if kind is None:
                continue
            values = getattr(feature, kind).value
            bad = _first_bad(values, kind == "bytes_list", allowed, low, high) if values else None
            if bad is not None:
                found.append(Violation(name, shown(bad[0]), self.allowed(name)))
        return found

    def column_violations(self, columns: Mapping[str, Iterable]) -> List[Violation]:
        """``violations`` over columns (feature -> the values of every row, e.g. the
        tensors of a ``serving_raw`` call): one per feature with a bad value."""
        found = []
        for name, allowed, low, high in self._plan:
            if name in columns:
                values = columns[name]
                values = values.ravel().tolist() if hasattr(values, "ravel") else list(values)
                is_text = bool(values) and isinstance(values[0], (bytes, str))
                values = [v.encode() if isinstance(v, str) else v for v in values] if is_text else values
                bad = _first_bad(values, is_text, allowed, low, high) if values else None
                if bad is not None:
                    found.append(Violation(name, shown(bad[0]), self.allowed(name)))
        return found

    def entries_in_domain(self, entries: Sequence[bytes]) -> bool:
        """Whether a tf.Example's feature-map entries, as serialized (each the bytes of one
        ``Features.feature`` map entry), are certainly all within the domain. False when
        one is not, or cannot be told without parsing: then check the parsed example
        (``violations``). Gives the same answer as ``not violations(example)`` when True."""
        return self._entries.all_in_domain(entries)

    @functools.cached_property
    def _entries(self) -> "EntryCheck":
        return EntryCheck({name.encode(): (allowed, low, high) for name, allowed, low, high in self._plan})

    @functools.cached_property
    def _plan(self) -> List[Tuple[str, Optional[FrozenSet[bytes]], float, float]]:
        """(feature, allowed strings or None, low, high) per checked feature (built once:
        a domain is not changed after its first check)."""
        return [(name, self.strings.get(name), *self.ranges.get(name, (0.0, 0.0))) for name in self.names]

    @property
    def names(self) -> List[str]:
        """The checked features, in ``DOMAIN_FEATURES`` order (others after, by name)."""
        checked = set(self.strings) | set(self.ranges)
        return [n for n in DOMAIN_FEATURES if n in checked] + sorted(checked - set(DOMAIN_FEATURES))

    def allowed(self, name: str) -> str:
        """``name``'s domain in words, at most ``MAX_ALLOWED_CHARS`` characters."""
        if name in self.strings:
            values = sorted(v.decode("utf-8", "replace") for v in self.strings[name])
            text = f"one of {len(values)} values: " + ", ".join(repr(v) for v in values)
            if len(text) > MAX_ALLOWED_CHARS:
                text = text[:MAX_ALLOWED_CHARS] + ", ..."
            return text
        low, high = self.ranges[name]
        return f"a number between {low:g} and {high:g}"

    # ------------------------------------------------ JSON
    def to_json(self) -> str:
        features = {}
        for name in self.names:
            if name in self.strings:
                entry = {"values": sorted(v.decode("utf-8", "replace") for v in self.strings[name])}
            else:
                entry = {"low": self.ranges[name][0], "high": self.ranges[name][1]}
                if name in self.training:
                    entry.update(training_min=self.training[name][0], training_max=self.training[name][1])
            features[name] = dict(entry, source=self.sources.get(name, ""))
        return json.dumps({"format": FORMAT, "margin": self.margin, "features": features,
                           "unchecked": dict(sorted(self.unchecked.items()))}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "InputDomain":
        """The domain ``to_json`` wrote; ``ValueError``/``KeyError``/``TypeError`` when it is none."""
        document = json.loads(text)
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
        strings, ranges, training, sources = {}, {}, {}, {}
        for name, entry in document["features"].items():
            sources[name] = str(entry.get("source", ""))
            if "values" in entry:
                strings[name] = frozenset(str(v).encode() for v in entry["values"])
                continue
            ranges[name] = (float(entry["low"]), float(entry["high"]))
            if "training_min" in entry:
                training[name] = (float(entry["training_min"]), float(entry["training_max"]))
        return cls(strings, ranges, float(document.get("margin", 0.0)),
                   {str(k): str(v) for k, v in document.get("unchecked", {}).items()}, sources, training)


def _first_bad(values, is_text: bool, allowed: Optional[FrozenSet[bytes]], low: float, high: float):
    """(the first of a feature's non-empty ``values`` outside its domain,) or None: a
    string not in ``allowed`` (an empty one is missing), a number outside [low, high]
    (NaN included), a string for a numeric feature or a number for a string feature."""
    if allowed is None:
        if is_text:
            return next(((v,) for v in values if v), None)
        if len(values) == 1:
            value = values[0]
            return None if low <= value <= high else (value,)
        return next(((v,) for v in values if not low <= v <= high), None)
    if not is_text:
        return (values[0],)
    if len(values) == 1:
        value = values[0]
        return None if not value or value in allowed else (value,)
    return next(((v,) for v in values if v and v not in allowed), None)


# ------------------------------------------------------------------ serialized entries
_MISSING_FEATURES = frozenset((b"", b"\x0a\x00", b"\x12\x00", b"\x1a\x00", b"\x0a\x02\x0a\x00"))
_ONE_FLOAT = b"\x12\x06\x0a\x04"       # Feature.float_list holding one packed value
_FLOAT = struct.Struct("<f").unpack_from
KNOWN, UNCHECKED, UNSURE = 1, 2, 3        # what EntryCheck.entry finds out about one entry


class EntryCheck:
    """``InputDomain.entries_in_domain``: each tf.Example feature-map entry (its wire bytes)
    read in the one layout TensorFlow writes (key, then a Feature holding one value or
    none; single-byte lengths) and checked against the domain; every entry found in it
    is remembered (at most ``MAX_KNOWN`` at a time), so a value seen before costs one set
    lookup. Anything else (another layout, a value out of domain) is UNSURE."""
    MAX_KNOWN = 1 << 15

    def __init__(self, by_key: Dict[bytes, Tuple[Optional[FrozenSet[bytes]], float, float]]):
        self.by_key = by_key          # feature name (UTF-8) -> (allowed strings or None, low, high)
        self.known: set = set()       # entries found within the domain

    def all_in_domain(self, entries: Sequence[bytes]) -> bool:
        known = self.known
        for entry in set(entries).difference(known):      # the entries not seen before
            found = self.entry(entry)
            if found == UNSURE:
                return False
            if found == KNOWN:
                if len(known) >= self.MAX_KNOWN:
                    known.clear()
                known.add(entry)
        return True

    def entry(self, entry: bytes) -> int:
        """KNOWN: a checked feature within the domain; UNCHECKED: a feature not checked;
        UNSURE: out of domain, or not in the layout read here."""
        size = len(entry)
        if size < 2 or entry[0] != 0x0A or entry[1] >= 0x80:
            return UNSURE
        start = 2 + entry[1]
        if start == size:
            feature = b""                 # a key without a value: an empty Feature
        elif start + 2 <= size and entry[start] == 0x12 and entry[start + 1] == size - start - 2:
            feature = entry[start + 2:]
        else:
            return UNSURE
        checked = self.by_key.get(entry[2:start])
        if checked is None:
            return UNCHECKED
        if feature in _MISSING_FEATURES:
            return KNOWN
        return KNOWN if _feature_in_domain(feature, *checked) else UNSURE


def _feature_in_domain(feature: bytes, allowed: Optional[FrozenSet[bytes]], low: float, high: float) -> bool:
    """Whether a serialized Feature holds one value within the domain (False: out of
    domain, or not one value in the layout TensorFlow writes)."""
    size = len(feature)
    if not 4 <= size <= 129 or feature[1] != size - 2 or feature[2] != 0x0A or feature[3] != size - 4:
        return False
    if allowed is not None:
        return feature[0] == 0x0A and feature[4:] in allowed
    if size == 8 and feature[:4] == _ONE_FLOAT:
        return low <= _FLOAT(feature, 4)[0] <= high
    if feature[0] != 0x1A or size > 13:
        return False                  # not int64_list, or a varint of 10 bytes (negative)
    value = shift = 0
    for byte in feature[4:]:          # one varint, the rest of the Feature
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return shift == 7 * (size - 4) and feature[-1] < 0x80 and low <= value <= high


# ------------------------------------------------------------------ from training
def from_statistics(statistics, schema, margin: float,
                    features: Iterable[str] = tuple(DOMAIN_FEATURES)) -> InputDomain:
    """The domain of ``features`` from the training split's statistics (a TFDV
    ``DatasetFeatureStatistics``) and the curated schema (a TFDV ``Schema``): see
    the module docstring for where each feature's domain comes from."""
    stats = {(s.path.step[0] if s.path.step else s.name): s for s in statistics.features}
    schema_values = schema_string_domains(schema)
    domain = InputDomain({}, {}, float(margin))
    for name in features:
        if F.RAW_FEATURE_TYPES.get(name) == "string":
            _add_string_domain(domain, name, schema_values.get(name), stats.get(name))
        else:
            _add_numeric_domain(domain, name, stats.get(name), margin)
    return domain


def schema_string_domains(schema) -> Dict[str, List[str]]:
    """feature -> its schema ``string_domain`` values (named or inline)."""
    named = {d.name: list(d.value) for d in schema.string_domain}
    out = {}
    for feature in schema.feature:
        if feature.HasField("string_domain"):
            out[feature.name] = list(feature.string_domain.value)
        elif feature.HasField("domain") and feature.domain in named:
            out[feature.name] = named[feature.domain]
    return out


def _add_string_domain(domain: InputDomain, name: str, schema_values: Optional[List[str]], stats) -> None:
    if schema_values:
        domain.strings[name] = frozenset(v.encode() for v in schema_values)
        domain.sources[name] = SCHEMA_SOURCE
        return
    if stats is None or not stats.HasField("string_stats"):
        domain.unchecked[name] = "no string statistics in the training split"
        return
    buckets = stats.string_stats.rank_histogram.buckets
    if stats.string_stats.unique > len(buckets):
        domain.unchecked[name] = (f"{stats.string_stats.unique} distinct values in training, the statistics "
                                  f"list {len(buckets)}: add a string_domain for it to the schema")
        return
    domain.strings[name] = frozenset(b.label.encode() for b in buckets)
    domain.sources[name] = STATISTICS_SOURCE


def _add_numeric_domain(domain: InputDomain, name: str, stats, margin: float) -> None:
    common = stats.num_stats.common_stats if stats is not None and stats.HasField("num_stats") else None
    if common is None or common.num_non_missing == 0:
        domain.unchecked[name] = "no numeric statistics in the training split"
        return
    low, high = float(stats.num_stats.min), float(stats.num_stats.max)
    if not (math.isfinite(low) and math.isfinite(high)):
        domain.unchecked[name] = f"the training range [{low}, {high}] is not finite"
        return
    width = (high - low) or max(abs(low), abs(high), 1.0)
    domain.ranges[name] = (low - margin * width, high + margin * width)
    domain.training[name] = (low, high)
    domain.sources[name] = STATISTICS_SOURCE


# ------------------------------------------------------------------ files
def write_domain(directory: Location, domain: InputDomain) -> str:
    """``domain`` as ``<directory>/DOMAIN_FILE``; the file's path."""
    path = storage.join(directory, DOMAIN_FILE)
    storage.makedirs(storage.join(directory, DOMAIN_FILE.rsplit("/", 1)[0]))
    storage.write_text(path, domain.to_json())
    return str(path)


def read_domain(version_dir: Location) -> Optional[InputDomain]:
    """The domain pushed with a version; None when the version has none (pushed
    before domains were written); ``DomainError`` naming the file when it is unreadable."""
    path = storage.join(version_dir, DOMAIN_FILE)
    if not storage.exists(path):
        return None
    try:
        return InputDomain.from_json(storage.read_text(path))
    except OSError as exc:
        raise DomainError(f"cannot read the input domain {path} ({exc.strerror or 'unreadable'})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DomainError(f"the input domain {path} is not a domain file tfxops wrote (format {FORMAT}): "
                          "push the version again") from None
