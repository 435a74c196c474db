"""The SERVING contract of a window: what the served signatures take.

The schema's SERVING environment describes what a client of ``serving_default``
sends (a serialized tf.Example carries every raw feature). A signature of one
tensor per model feature (``serving_raw``) takes fewer: not the time key, which
the schema requires in every row. Its rows, logged exactly as the client sent
them, lack what it does not take, and TFDV would call that feature dropped.

So a version's window is validated against an effective schema: for a feature
that a signature used in the window does not take, presence is required only in
the rows of the signatures that take it (``min_fraction`` scaled by their share of
the rows, ``min_count`` at most their rows) and a fixed ``shape`` (which means
"present in every row") becomes the same number of values where present
(``value_count``). Nothing else changes: types, domains, skew and drift
comparators stay. Rows of the signatures that take the feature and lack it are
still flagged. TFDV's environments cannot say this: ``not_in_environment``
drops a feature from SERVING altogether (a present one is then "missing in
environment"), and an environment is chosen per validation, not per row.
"""
import copy
import dataclasses
from typing import Dict, List, Set, Tuple

from core.features import DEFAULT_SIGNATURE
from monitoring.checks import serving_features

_TOLERANCE = 1e-9      # below the scaled fraction: float rounding never turns into an anomaly


def takes(inputs: Dict[str, Set[str]], signature: str, name: str, known: Set[str]) -> bool:
    """Whether ``signature`` (of a model whose signatures take ``inputs``) takes feature
    ``name``: yes for a signature whose inputs are none of the ``known`` features (an
    ``examples`` tensor of serialized tf.Examples carries every one) or that the model
    does not have (nothing known about it: every feature expected)."""
    taken = inputs.get(signature or DEFAULT_SIGNATURE)
    return not taken or not (taken & known) or name in taken


@dataclasses.dataclass(frozen=True)
class Relaxed:
    """A feature whose presence the window's schema requires only in some rows."""
    feature: str
    signatures: Tuple[str, ...]    # the window's signatures that do not take it
    rows: int                      # rows they served
    of: int                        # rows of the version in the statistics
    min_fraction: float            # the schema's
    effective_min_fraction: float
    min_count: int
    effective_min_count: int
    shape: str                     # the schema's fixed shape made a value count, or ""

    def line(self) -> str:
        names = ", ".join(self.signatures)
        which = "which served" if len(self.signatures) == 1 else "which together served"
        others = f"required in the other {self.of - self.rows}" if self.of > self.rows else "required in none"
        return (f"{self.feature}: not an input of {names}, {which} {self.rows} of the {self.of} rows; "
                f"{others} (presence min_fraction {self.min_fraction:g} -> "
                f"{self.effective_min_fraction:.4g}, min_count {self.min_count} -> {self.effective_min_count}"
                + (f", {self.shape}" if self.shape else "") + ")")

    def as_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), signatures=list(self.signatures), line=self.line())


@dataclasses.dataclass
class Contract:
    schema: object                 # the effective schema (a copy) or the served one, unchanged
    relaxed: List[Relaxed]


def effective(schema, rows_by_signature: Dict[str, int], inputs: Dict[str, Set[str]]) -> Contract:
    """The schema to validate a version's window with (see the module's doc):
    ``rows_by_signature``: rows in the statistics per logged signature name;
    ``inputs``: the served model's input names per signature."""
    counts: Dict[str, int] = {}
    for name, n in rows_by_signature.items():
        counts[name or DEFAULT_SIGNATURE] = counts.get(name or DEFAULT_SIGNATURE, 0) + n
    total = sum(counts.values())
    features = serving_features(schema)
    known = {f.name for f in features}
    out, relaxed = None, []
    for feature in features:
        skipping = tuple(sorted(s for s, n in counts.items() if n and not takes(inputs, s, feature.name, known)))
        if not skipping or not _constrains(feature):
            continue
        if out is None:
            out = copy.deepcopy(schema)
        target = next(f for f in out.feature if f.name == feature.name)
        relaxed.append(_relax(target, skipping, sum(counts[s] for s in skipping), total))
    return Contract(schema if out is None else out, relaxed)


def _constrains(feature) -> bool:
    """Requires the feature in some rows: a presence minimum, or a fixed shape."""
    presence = feature.presence if feature.HasField("presence") else None
    return bool(presence and (presence.min_fraction > 0 or presence.min_count > 0)) or feature.HasField("shape")


def _relax(feature, signatures: Tuple[str, ...], rows: int, total: int) -> Relaxed:
    """``feature`` (in the copy) required only in the ``total - rows`` rows that take it."""
    fraction, count = feature.presence.min_fraction, feature.presence.min_count
    if feature.HasField("presence"):
        share = (total - rows) / total
        feature.presence.min_fraction = max(0.0, fraction * share - _TOLERANCE) if share else 0.0
        feature.presence.min_count = min(count, total - rows)
    shape = ""
    if feature.HasField("shape"):
        size = 1
        for dim in feature.shape.dim:
            size *= dim.size
        dims = [d.size for d in feature.shape.dim]
        feature.value_count.min = feature.value_count.max = size      # clears the shape (a oneof)
        shape = f"shape {dims} -> {size} value(s) where present"
    return Relaxed(feature.name, signatures, rows, total, round(fraction, 6),
                   round(feature.presence.min_fraction, 6), int(count), int(feature.presence.min_count), shape)
