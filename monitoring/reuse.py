"""Previously blessed models against a window: is there one whose training data
the window matches (no feature over its skew threshold, no ERROR anomaly), so that
re-pushing it serves this traffic instead of training a new model?"""
import dataclasses
import logging
from typing import Dict, List, Optional

from monitoring import baseline as baseline_lib, checks, contract as contract_lib, rejections as rejections_lib

log = logging.getLogger("tfxops.monitoring")


@dataclasses.dataclass
class ReuseCandidate:
    """A blessed model judged against the window."""
    model_id: int
    model_uri: str
    model_path: str
    over: List[str]          # features over their skew threshold against its training data
    errors: int              # ERROR anomalies against its schema
    matches: bool
    score: float             # the worst feature's skew / threshold (lower: closer)
    why: str

    def to_dict(self, with_path: bool = True) -> Dict:
        out = dataclasses.asdict(self)
        if not with_path:
            del out["model_path"]
        return out


def candidates(store, current_model_id: int, stats, rows_by_signature: Dict[str, int]) -> List[ReuseCandidate]:
    """Every other blessed model: does this window match its training data (judged on
    what its signatures take, as the served model's)?"""
    out = []
    for other in baseline_lib.blessed_models(store):
        if other.model.id == current_model_id:
            continue
        try:
            schema = contract_lib.effective(other.load_schema(), rows_by_signature,
                                            rejections_lib.signature_inputs(other.model_path)).schema
            features = checks.validate(stats, other.load_statistics("train"), schema)["features"]
        except Exception as exc:  # noqa: BLE001 - a model whose files are gone
            log.warning("cannot compare with model %s: %s", other.model.id, exc)
            continue
        out.append(_judged(other, features))
    return out


def _judged(other: baseline_lib.Baseline, features: List[checks.FeatureResult]) -> ReuseCandidate:
    over = [f.name for f in features if f.over_skew]
    errors = sum(f.error_anomalies for f in features)
    watched = [f for f in features if f.skew is not None and f.skew_threshold]
    worst = max(watched, key=lambda f: f.skew / f.skew_threshold, default=None)
    return ReuseCandidate(
        model_id=other.model.id, model_uri=other.model.uri, model_path=other.model_path,
        over=over, errors=errors, matches=not over and not errors,
        score=worst.skew / worst.skew_threshold if worst else 0.0,
        why=("no feature over its skew threshold and no ERROR anomaly against its training statistics"
             + (f" (closest to its threshold: {worst.name} {worst.skew:.3f} / {worst.skew_threshold:g})"
                if worst else "")))


def best(found: List[ReuseCandidate]) -> Optional[ReuseCandidate]:
    """The matching candidate closest to the window; None if none matches."""
    return min((c for c in found if c.matches), key=lambda c: c.score, default=None)
