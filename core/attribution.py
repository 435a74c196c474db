"""Per-feature attributions of a model through its raw-feature signature
(``core.features.RAW_SIGNATURE``): how much each raw feature moves the model's
output (``PREDICTION_KEY``, the probability) on a set of rows, and how those rows'
attributions are stored (JSON at an artifact URI) and found again through MLMD.

Method: sampled Shapley values (permutation sampling, Strumbelj and Kononenko
2014; the method Vertex AI Explainable AI calls "sampled Shapley"), with each
feature's absence played by a row of a background sample (interventional Shapley
values, as SHAP's permutation and Kernel explainers compute them). Why this one:

* the raw signature takes strings (``payment_type``, ``company``), integer
  categories and numbers with missing values (sent as ``""`` / 0). Integrated
  gradients needs a path of inputs the output is differentiable along: there is
  none from one string to another, and the Transform graph in the signature
  buckets, looks up and one-hot encodes every feature but three, so its
  gradients are zero or undefined for twelve of the fifteen inputs. A Shapley
  method only calls the model: it works through the signature as clients call
  it, strings and missing values included (a missing value is the value the
  model sees, ``""`` or 0);
* permutation sampling keeps Shapley's efficiency exactly for every sampled
  permutation (the attributions of a row add up to its output minus the
  background row's), and each permutation is walked with its reverse
  (antithetic pairs), which cancels much of the sampling noise;
* the cost is fixed in advance: ``rows * samples * (features + 1)`` rows of
  model input, sent in batches of ``BATCH_ROWS``; draws come from one seeded
  generator, so the same rows, background, samples and seed give the same
  attributions.

A set's attributions are summarised as each feature's mean absolute attribution
(``Attributions.mean_abs``), its share of their sum (``shares``) and their
order (``ranking``): what SageMaker Clarify reports as global SHAP values and
its Model Monitor compares between training and live data.

The pipeline's ``pipeline.attribution.FeatureAttributor`` writes them (artifact
type ``FeatureAttributions``, an output of an execution that read the Model);
``artifact_for_model`` / ``for_model`` find them for a Model artifact id.
"""
import dataclasses
import json
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from core import features as F
from core import mlmd, storage
from core.storage import Location

METHOD = "sampled-shapley"
ARTIFACT_TYPE = "tfxops.FeatureAttributions"   # KFP v2 wants a custom type name "<namespace>.<Name>"
FILE_NAME = "attributions.json"
BATCH_ROWS = 8192            # rows of model input per call of the signature

Columns = Dict[str, np.ndarray]
Predict = Callable[[Columns], np.ndarray]


class AttributionError(RuntimeError):
    """Attributions that cannot be computed or read; the message names what and why."""


@dataclasses.dataclass(frozen=True)
class Attributions:
    """Attributions of a model on ``rows`` rows: each raw feature's mean absolute
    attribution to the output; how they were computed (``samples`` permutations per
    row against ``background``, the rows that stand for an absent feature, drawn with
    ``seed``) and what it cost (``seconds``, ``model_calls``, ``model_rows``)."""
    method: str
    rows: int
    mean_abs: Dict[str, float]
    samples: int = 0
    seed: int = 0
    background: List[Dict] = dataclasses.field(default_factory=list)
    cost: Dict[str, float] = dataclasses.field(default_factory=dict)

    def shares(self) -> Dict[str, float]:
        """Each feature's share of the summed mean absolute attributions (sums to 1)."""
        total = sum(self.mean_abs.values())
        return {name: (value / total if total > 0 else 0.0) for name, value in self.mean_abs.items()}

    def ranking(self) -> List[str]:
        """Features by mean absolute attribution, largest first (ties by name)."""
        return sorted(self.mean_abs, key=lambda name: (-self.mean_abs[name], name))

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict) -> "Attributions":
        return cls(method=data["method"], rows=int(data["rows"]),
                   mean_abs={k: float(v) for k, v in data["mean_abs"].items()},
                   samples=int(data.get("samples", 0)), seed=int(data.get("seed", 0)),
                   background=list(data.get("background", [])), cost=dict(data.get("cost", {})))


# ------------------------------------------------------------------ the estimator
@dataclasses.dataclass(frozen=True)
class Estimate:
    """Per-row attributions: ``values[i, j]`` of row i to feature ``features[j]``."""
    features: List[str]
    values: np.ndarray
    model_calls: int
    model_rows: int


def sampled_shapley(predict: Predict, rows: Columns, background: Columns, *, samples: int, seed: int,
                    batch_rows: int = BATCH_ROWS) -> Estimate:
    """Shapley values of ``predict`` (columns -> one output per row) for each row of
    ``rows`` by permutation sampling: per row, ``samples`` permutations (rounded up
    to antithetic pairs), each with one background row drawn uniformly; walking a
    permutation switches the features from the background row's values to the
    row's one at a time, and each switch's change of the output is that feature's
    contribution. Their mean over the permutations estimates the row's Shapley values."""
    features = sorted(rows)
    n, m, b = len(rows[features[0]]), len(features), len(background[features[0]])
    if n == 0 or b == 0:
        raise AttributionError(f"nothing to attribute: {n} row(s) to explain, {b} background row(s) "
                               "(setting attribution_background_rows)")
    rng = np.random.default_rng(seed)
    pairs = max(1, (samples + 1) // 2)
    order = np.argsort(rng.random((n, pairs, m)), axis=2)
    order = np.concatenate([order, order[:, :, ::-1]], axis=1)             # (n, S, m): features in walk order
    drawn = rng.integers(b, size=(n, pairs))
    drawn = np.concatenate([drawn, drawn], axis=1)                          # (n, S): the background row
    position = np.argsort(order, axis=2)                                    # (n, S, m): each feature's step
    steps = np.arange(m + 1)
    walks = {name: np.where(position[:, :, j, None] < steps, rows[name][:, None, None],
                            background[name][drawn][:, :, None]).reshape(-1)
             for j, name in enumerate(features)}
    outputs, calls = _in_batches(predict, walks, batch_rows)
    gains = np.diff(outputs.reshape(n, order.shape[1], m + 1), axis=2)    # step k's change of the output
    values = np.take_along_axis(gains, position, axis=2).mean(axis=1)      # (n, m), by feature
    return Estimate(features, values, calls, len(outputs))


def _in_batches(predict: Predict, columns: Columns, batch_rows: int):
    """``predict`` over ``columns`` in batches of ``batch_rows``: the outputs, the calls."""
    total = len(next(iter(columns.values())))
    outputs = [np.asarray(predict({k: v[start:start + batch_rows] for k, v in columns.items()}),
                          np.float64).reshape(-1)
               for start in range(0, total, batch_rows)]
    return np.concatenate(outputs), len(outputs)


# ------------------------------------------------------------------ the model
class RawSignature:
    """A SavedModel's raw-feature signature as a ``Predict``: its inputs by name and
    dtype (``inputs``), called with one column per input."""

    def __init__(self, model_dir: Location):
        import tensorflow as tf

        try:
            model = tf.saved_model.load(str(model_dir))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise AttributionError(f"cannot load the model at {model_dir}: {str(exc).splitlines()[0]}") from None
        if F.RAW_SIGNATURE not in model.signatures:
            raise AttributionError(
                f"the model at {model_dir} has no '{F.RAW_SIGNATURE}' signature (it has "
                f"{', '.join(sorted(model.signatures)) or 'none'}): attributions are computed per raw feature "
                f"through it; export it as modules/trainer.py does")
        self._model, self._function = model, model.signatures[F.RAW_SIGNATURE]
        self.inputs = {name: spec.dtype for name, spec in self._function.structured_input_signature[1].items()}

    def __call__(self, columns: Columns) -> np.ndarray:
        import tensorflow as tf

        outputs = self._function(**{name: tf.constant(values) for name, values in columns.items()})
        return outputs[F.PREDICTION_KEY].numpy().reshape(-1)


def columns_of(rows: Sequence[Dict], inputs: Dict) -> Columns:
    """Rows (raw values: CSV strings, typed values, None or "" for missing) as one
    array per input of the signature (``inputs``: name -> tf.DType); a missing
    value becomes what the signature takes for it (``""`` or 0)."""
    columns = {}
    for name, dtype in inputs.items():
        values = [row.get(name) for row in rows]
        if dtype.is_floating or dtype.is_integer:
            cast = float if dtype.is_floating else (lambda v: int(float(v)))
            columns[name] = np.array([F.default_value(name) if _missing(v) else cast(v) for v in values],
                                     dtype=dtype.as_numpy_dtype)
        else:
            columns[name] = np.array([b"" if _missing(v) else (v if isinstance(v, bytes) else str(v).encode())
                                      for v in values], dtype=object)
    return columns


def _missing(value) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, float) and np.isnan(value))


def _plain_row(row: Dict, inputs: Dict) -> Dict:
    """A background row as JSON: the signature's inputs only, typed, None when missing."""
    out = {}
    for name, dtype in inputs.items():
        value = row.get(name)
        if _missing(value):
            out[name] = None
        elif dtype.is_floating:
            out[name] = float(value)
        elif dtype.is_integer:
            out[name] = int(float(value))
        else:
            out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def compute(model_dir: Location, rows: Sequence[Dict], background: Sequence[Dict], *, samples: int,
            seed: int) -> Attributions:
    """Attributions of the model at ``model_dir`` on ``rows`` against ``background``
    (both lists of raw rows), by ``sampled_shapley`` through its raw signature."""
    started = time.monotonic()
    model = RawSignature(model_dir)
    estimate = sampled_shapley(model, columns_of(rows, model.inputs), columns_of(background, model.inputs),
                               samples=samples, seed=seed)
    mean_abs = dict(zip(estimate.features, (float(v) for v in np.abs(estimate.values).mean(axis=0))))
    cost = {"seconds": round(time.monotonic() - started, 3), "model_calls": estimate.model_calls,
            "model_rows": estimate.model_rows}
    return Attributions(METHOD, len(rows), mean_abs, samples, seed,
                        [_plain_row(row, model.inputs) for row in background], cost)


# ------------------------------------------------------------------ storage and MLMD
def save(attributions: Attributions, uri: Location) -> None:
    """Write ``attributions`` as ``<uri>/attributions.json`` (a local directory or a URI)."""
    storage.makedirs(uri)
    storage.write_text(storage.join(uri, FILE_NAME), json.dumps(attributions.to_dict(), indent=1, sort_keys=True))


def load(uri: Location) -> Attributions:
    """The attributions saved under ``uri``; ``AttributionError`` naming the file and
    what is wrong with it otherwise."""
    path = storage.join(uri, FILE_NAME)
    rerun = "rerun the pipeline (its FeatureAttributor writes them)"
    try:
        data = json.loads(storage.read_text(path))
    except OSError as exc:
        raise AttributionError(f"cannot read the attributions at {path} ({exc.strerror or 'unreadable'}); "
                               f"{rerun}") from None
    except ValueError:
        raise AttributionError(f"the attributions at {path} are not valid JSON; {rerun}") from None
    missing = [key for key in ("method", "rows", "mean_abs") if not isinstance(data, dict) or key not in data]
    if missing:
        raise AttributionError(f"the attributions at {path} have no {', '.join(missing)} field(s); {rerun}")
    try:
        return Attributions.from_dict(data)
    except (ValueError, TypeError, AttributeError):
        raise AttributionError(f"the attributions at {path} are malformed: 'rows' must be a number and "
                               f"'mean_abs' a mapping of feature to number; {rerun}") from None


def artifact_for_model(store, model_id: int):
    """The newest ``FeatureAttributions`` artifact an execution that read the Model
    artifact ``model_id`` wrote (completed or cached); None if there is none."""
    return mlmd.newest_output_for_model(store, model_id, ARTIFACT_TYPE)


def for_model(store, model_id: int) -> Optional[Attributions]:
    """The push-time attributions of the Model artifact ``model_id`` (see
    ``artifact_for_model``); None when no execution wrote any."""
    artifact = artifact_for_model(store, model_id)
    return None if artifact is None else load(artifact.uri)
