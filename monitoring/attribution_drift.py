"""Feature attribution drift: whether the features a served model relies on in a
window are those it relied on at push time.

At push, the pipeline's ``FeatureAttributor`` stored the model's attributions on
a sample of its evaluation split (``core.attribution``, found through MLMD: an
output of an execution that read the Model). Per window, the same method explains
a sample of the rows the version served (``monitoring.sample``: ``attribution_rows``
of them, at most ``sample.SAMPLE_ROWS``), against the same background rows with
the same number of permutations and seed, so the two differ only by the rows
explained. Its cost per version and window: loading the SavedModel, and
``rows * samples * (features + 1)`` rows of model input (``AttributionDrift.cost``).

The two are compared as SageMaker Model Monitor compares global SHAP values
between training and live data, by the NDCG of the live ranking against the
push-time one::

    F = [f1, ..., fm]   the features by push-time mean |attribution|, largest first
    a(f)                 feature f's mean |attribution| in the window
    DCG  = sum_i a(f_i)  / log2(i + 1)        (i = 1..m, F's order)
    iDCG = sum_i a(f'_i) / log2(i + 1)        (F' = the features by a, largest first)
    NDCG = DCG / iDCG                         (1: the same order; 1 too when a is 0 everywhere)

NDCG weighs the top of the ranking most: a feature that was minor at push and now
carries the decision pulls it down; two minor features swapping places barely
move it. Below ``attribution_min_ndcg`` (SageMaker's default: 0.90) the window
is flagged. Each feature's share of the summed attributions is compared too; the
largest changes are the report's top movers.

What it cannot tell: attributions say which features move the output on these
rows, not whether the output is right; a drift means the served rows sit where
other features decide (a shift of the inputs, or a client sending something new),
which the skew and drift checks see from another side. Hence, by default, a
flagged window is an alert, never acted on (``trigger_on_attribution_drift``
makes it a reason to retrain like the other checks).
"""
import dataclasses
import math
from typing import Dict, List, Optional

from core import attribution, mlmd
from core.config import Settings

TOP_MOVERS = 5          # features shown as the top movers
MIN_ROWS = 30           # fewer served rows in the window: not judged (too noisy)


def ndcg(push_time: Dict[str, float], window: Dict[str, float]) -> float:
    """NDCG of the window's scores ranked in the push-time order (see the module's
    docstring); features missing on one side score 0 there."""
    names = sorted(set(push_time) | set(window))
    order = sorted(names, key=lambda name: (-push_time.get(name, 0.0), name))
    ideal = sorted((window.get(name, 0.0) for name in names), reverse=True)
    dcg = sum(window.get(name, 0.0) / math.log2(i + 2) for i, name in enumerate(order))
    idcg = sum(score / math.log2(i + 2) for i, score in enumerate(ideal))
    return 1.0 if idcg <= 0 else dcg / idcg


@dataclasses.dataclass(frozen=True)
class FeatureShift:
    """One feature's share of the attributions, and rank, at push and in the window."""
    name: str
    push_share: float
    window_share: float
    push_rank: int
    window_rank: int

    @property
    def change(self) -> float:
        return self.window_share - self.push_share

    def as_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), change=self.change)

    def line(self) -> str:
        return (f"{self.name} {self.push_share:.2f} -> {self.window_share:.2f} "
                f"(rank {self.push_rank} -> {self.window_rank})")


@dataclasses.dataclass
class AttributionDrift:
    """A version's attribution drift in a window: judged (``available``) or why not."""
    available: bool
    reason: str = ""                       # why it was not judged
    ndcg: Optional[float] = None
    threshold: float = 0.0
    rows: int = 0                          # served rows explained
    push_rows: int = 0                     # evaluation rows explained at push
    artifact_id: Optional[int] = None      # the push-time FeatureAttributions artifact
    shifts: List[FeatureShift] = dataclasses.field(default_factory=list)   # by |change|, largest first
    cost: Dict[str, float] = dataclasses.field(default_factory=dict)       # the window's computation

    @property
    def drifted(self) -> bool:
        return self.available and self.ndcg is not None and self.ndcg < self.threshold

    def top_movers(self) -> List[FeatureShift]:
        return self.shifts[:TOP_MOVERS]

    def finding(self) -> str:
        """The flagged drift in words (the policy's reason when it triggers)."""
        return (f"feature attribution drift: NDCG {self.ndcg:.3f} < {self.threshold:g} (the ranking on {self.rows} "
                f"served rows vs at push on {self.push_rows} evaluation rows); top movers: "
                + ", ".join(shift.line() for shift in self.top_movers()))

    def as_dict(self) -> Dict:
        return {"available": self.available, "reason": self.reason, "ndcg": self.ndcg, "threshold": self.threshold,
                "drifted": self.drifted, "rows": self.rows, "push_rows": self.push_rows,
                "artifact_id": self.artifact_id, "top_movers": [s.name for s in self.top_movers()],
                "features": [s.as_dict() for s in self.shifts], "cost": dict(self.cost)}


def compare(push_time: attribution.Attributions, window: attribution.Attributions, threshold: float,
            artifact_id: Optional[int] = None) -> AttributionDrift:
    """The window's attributions against the push-time ones."""
    push_shares, window_shares = push_time.shares(), window.shares()
    push_rank = {name: i + 1 for i, name in enumerate(push_time.ranking())}
    window_rank = {name: i + 1 for i, name in enumerate(window.ranking())}
    names = sorted(set(push_shares) | set(window_shares))
    shifts = [FeatureShift(name, push_shares.get(name, 0.0), window_shares.get(name, 0.0),
                           push_rank.get(name, len(names)), window_rank.get(name, len(names))) for name in names]
    shifts.sort(key=lambda shift: (-abs(shift.change), shift.name))
    return AttributionDrift(True, ndcg=ndcg(push_time.mean_abs, window.mean_abs), threshold=threshold,
                            rows=window.rows, push_rows=push_time.rows, artifact_id=artifact_id, shifts=shifts,
                            cost=dict(window.cost))


def judge(settings: Settings, store, model_id: int, model_path: str, served_rows: List[bytes]) -> AttributionDrift:
    """Attribution drift of the Model artifact ``model_id`` (its SavedModel at
    ``model_path``) on ``served_rows`` (serialized tf.Examples, the window's sample,
    lowest priority first): not judged, with the reason, when it is off, when the
    model has no push-time attributions or when the window has too few rows."""
    if settings.attribution_rows <= 0:
        return AttributionDrift(False, "off (attribution_rows=0)")
    artifact = attribution.artifact_for_model(store, model_id)
    if artifact is None:
        return AttributionDrift(False, f"no push-time attributions of Model artifact {model_id} in MLMD (trained "
                                       f"before the pipeline had its FeatureAttributor): the next pipeline run "
                                       f"computes them for its model")
    rows = [_row(serialized) for serialized in served_rows[:settings.attribution_rows]]
    if len(rows) < MIN_ROWS:
        return AttributionDrift(False, f"{len(rows)} served row(s) in the window, fewer than {MIN_ROWS}",
                                artifact_id=artifact.id)
    try:
        push_time = attribution.load(artifact.uri)
        if not push_time.mean_abs:
            return AttributionDrift(False, "the push-time attributions are empty (attribution_rows was 0 at push)",
                                    artifact_id=artifact.id)
        window = attribution.compute(model_path, rows, push_time.background, samples=push_time.samples,
                                     seed=push_time.seed)
    except attribution.AttributionError as exc:
        return AttributionDrift(False, str(exc), artifact_id=artifact.id)
    return compare(push_time, window, settings.attribution_min_ndcg, artifact.id)


def push_time_artifact(store, drift: Optional[AttributionDrift]):
    """The push-time ``FeatureAttributions`` artifact ``drift`` was judged against (an
    input of the monitor's MLMD record); None if there was none."""
    if drift is None or drift.artifact_id is None:
        return None
    return mlmd.artifact(store, drift.artifact_id)


def _row(serialized: bytes) -> Dict:
    import tensorflow as tf

    from core.examples import example_to_row

    return example_to_row(tf.train.Example.FromString(serialized))
