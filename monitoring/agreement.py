"""Agreement between the production version and a candidate, per window: how often
they decide alike and how far apart their scores lie.

Two ways a window holds a candidate's answers (``serving.traffic_split``):

* shadow: the candidate ran on calls production answered, logged under the same
  request id with ``core.request_log.SHADOW_TAG``. Rows are paired by (request id,
  row): ``decision_agreement`` is the share of pairs on the same side of
  ``decision_threshold``; production is the version that answered the pair.
* canary: both versions answered calls of their own, so rows cannot be paired; the
  scores' distributions are compared, and each side's positive rate is given.
  Production is the version that answered most of the model's rows in the
  window, each other version a candidate.

For both, ``score_distance`` is the Jensen-Shannon distance (base 2, 0..1) between
the score histograms on ``BINS`` equal bins of [0, 1], and ``ks_statistic`` /
``ks_pvalue`` the two-sample Kolmogorov-Smirnov test of the scores.

The window's files are read again here only when there is something to compare:
shadow answers, or two answered versions of one model (both counted by the
monitor's read of the window; an engine that does not count shadow answers has the
files read again, and the records holding the shadow tag's bytes looked for).
Shadow answers are no served traffic: ``monitoring.window`` leaves them out of the
statistics, drift, skew and quality (a client cannot forge one: the tag is in the
record's metadata, which the server writes).
"""
import dataclasses
import html
import logging
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np

from core.request_log import SHADOW_TAG
from monitoring import window as window_lib

log = logging.getLogger("tfxops.monitoring")
BINS = 10
SHADOW, CANARY = "shadow", "canary"
_TAG_BYTES = SHADOW_TAG.encode()
Scores = Dict[Tuple[str, int], float]            # (request id, row) -> score


@dataclasses.dataclass
class AgreementResult:
    """Production (``stable_version``) against a candidate in one window."""
    model_name: str
    stable_version: Optional[int]
    candidate_version: Optional[int]
    mode: str                        # SHADOW (paired by request id) | CANARY (two populations)
    paired: int                      # rows both answered (shadow); 0 for a canary
    stable_rows: int                 # the rows compared of each side
    candidate_rows: int
    decision_threshold: float
    decision_agreement: Optional[float]   # share of pairs decided alike (None: not paired)
    score_distance: Optional[float]       # Jensen-Shannon distance of the score histograms, 0..1
    ks_statistic: Optional[float]
    ks_pvalue: Optional[float]
    stable_positive_rate: Optional[float]     # share of rows above decision_threshold
    candidate_positive_rate: Optional[float]
    mean_abs_score_difference: Optional[float] = None   # over the pairs (shadow)

    def as_dict(self) -> Dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One line for the summary and the report."""
        agreed = "" if self.decision_agreement is None else f"decisions agree {self.decision_agreement:.1%} of " \
                                                             f"{self.paired} paired rows, "
        distance = "n/a" if self.score_distance is None else f"{self.score_distance:.3f}"
        return (f"{self.mode}: version {self.candidate_version} vs {self.stable_version}: {agreed}"
                f"score distance (Jensen-Shannon) {distance}")


def judge(settings, win: window_lib.Window, traffic) -> List[AgreementResult]:
    """The window's agreement results: shadow pairs, then canaries (two or more answered
    versions of a model); [] when it holds neither. ``traffic`` (a
    ``traffic.WindowTraffic``) tells from the monitor's read of the window whether
    there is anything to compare: its files are read again only then."""
    answered = defaultdict(int)
    for name, version in (key for key, counted in traffic.versions.items() if counted.requests):
        answered[name] += 1
    canary = any(count > 1 for count in answered.values())
    if traffic.shadow_records == 0 and not canary:
        return []
    records, shadow = _window_records(win)
    if not shadow and not canary:
        return []
    production = _scores_by_version(window_lib.decode_records(records))
    threshold = settings.decision_threshold
    paired = []
    if shadow:
        candidates = _scores_by_version(window_lib.decode_records(shadow, shadow=True))
        paired = _shadow_results(production, candidates, threshold)
    return paired + _canary_results(production, threshold)


def _window_records(win: window_lib.Window) -> Tuple[List[bytes], List[bytes]]:
    """Every readable record of the window, and those holding the shadow tag's bytes
    (the decoding decides which are shadow answers). Parts that cannot be read now
    are the monitor's to report: left out."""
    records: List[bytes] = []
    for part in win.parts:
        try:
            records.extend(window_lib.read_part(part).records)
        except (window_lib.CorruptLogError, OSError) as exc:
            log.info("agreement: %s left out (%s)", part.name, exc)
    return records, [r for r in records if _TAG_BYTES in r]


def _scores_by_version(chunks: List[window_lib.Chunk]) -> Dict[Tuple[str, Optional[int]], Scores]:
    """(model, version) -> (request id, row) -> score, of the answered rows."""
    out: Dict[Tuple[str, Optional[int]], Scores] = defaultdict(dict)
    for chunk in chunks:
        if not chunk.serialized:          # only rejected calls: nothing answered
            continue
        scores = out[(chunk.model_name, chunk.version)]
        for rid, row, score in zip(chunk.request_ids, chunk.row_in_request.tolist(), chunk.predictions.tolist()):
            scores[(rid, row)] = score
    return out


def _shadow_results(production: Dict, candidates: Dict, threshold: float) -> List[AgreementResult]:
    """Each (model, candidate version) against the versions that answered the same rows."""
    results = []
    for (name, candidate), shadow_scores in sorted(candidates.items(), key=_order):
        by_stable: Dict[Optional[int], List[Tuple[float, float]]] = defaultdict(list)
        for (model, version), scores in production.items():
            if model != name or version == candidate:
                continue
            for key, score in scores.items():
                if key in shadow_scores:
                    by_stable[version].append((score, shadow_scores[key]))
        for stable, pairs in sorted(by_stable.items(), key=lambda item: item[0] or 0):
            stable_scores, candidate_scores = (np.asarray(side, np.float64) for side in zip(*pairs))
            results.append(_compared(name, stable, candidate, SHADOW, stable_scores, candidate_scores, threshold))
    return results


def _canary_results(production: Dict, threshold: float) -> List[AgreementResult]:
    """Per model answered by two or more versions: the others against the busiest one."""
    models = defaultdict(dict)
    for (name, version), scores in production.items():
        models[name][version] = np.asarray(list(scores.values()), np.float64)
    results = []
    for name, versions in sorted(models.items()):
        if len(versions) < 2:
            continue
        stable = max(versions, key=lambda v: (len(versions[v]), -(v or 0)))
        for candidate in sorted(v for v in versions if v != stable):
            results.append(_compared(name, stable, candidate, CANARY, versions[stable], versions[candidate],
                                     threshold))
    return results


def _compared(name: str, stable: Optional[int], candidate: Optional[int], mode: str, stable_scores: np.ndarray,
              candidate_scores: np.ndarray, threshold: float) -> AgreementResult:
    """The statistics of two score samples (paired row by row when ``mode`` is SHADOW)."""
    stable_scores = stable_scores[np.isfinite(stable_scores)] if mode == CANARY else stable_scores
    candidate_scores = candidate_scores[np.isfinite(candidate_scores)] if mode == CANARY else candidate_scores
    if mode == SHADOW:
        both = np.isfinite(stable_scores) & np.isfinite(candidate_scores)
        stable_scores, candidate_scores = stable_scores[both], candidate_scores[both]
    paired = len(stable_scores) if mode == SHADOW else 0
    result = AgreementResult(name, stable, candidate, mode, paired, len(stable_scores), len(candidate_scores),
                             threshold, None, None, None, None, _positive_rate(stable_scores, threshold),
                             _positive_rate(candidate_scores, threshold))
    if not len(stable_scores) or not len(candidate_scores):
        return result
    if mode == SHADOW:
        result.decision_agreement = float(np.mean((stable_scores > threshold) == (candidate_scores > threshold)))
        result.mean_abs_score_difference = float(np.mean(np.abs(stable_scores - candidate_scores)))
    result.score_distance = jensen_shannon_distance(stable_scores, candidate_scores)
    result.ks_statistic, result.ks_pvalue = _ks(stable_scores, candidate_scores)
    return result


def jensen_shannon_distance(a: np.ndarray, b: np.ndarray, bins: int = BINS) -> float:
    """Jensen-Shannon distance (base 2: 0 = the same histogram, 1 = disjoint) of two
    samples of scores in [0, 1] over ``bins`` equal bins (values outside are clipped)."""
    from scipy.spatial.distance import jensenshannon

    edges = np.linspace(0.0, 1.0, bins + 1)
    p = np.histogram(np.clip(a, 0.0, 1.0), edges)[0].astype(np.float64)
    q = np.histogram(np.clip(b, 0.0, 1.0), edges)[0].astype(np.float64)
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


def _ks(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    from scipy.stats import ks_2samp

    test = ks_2samp(a, b)
    return float(test.statistic), float(test.pvalue)


def _positive_rate(scores: np.ndarray, threshold: float) -> Optional[float]:
    return float(np.mean(scores > threshold)) if len(scores) else None


def _order(item) -> Tuple[str, int]:
    (name, version), _ = item
    return name, version or 0


# ------------------------------------------------------------------ report
def report_section(results: Optional[List[Dict]]) -> str:
    """The report's "Production vs candidate" section (HTML) from the result's
    ``agreement`` list; "" when the window held no candidate."""
    if not results:
        return ""
    rows = []
    for r in results:
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in (
            html.escape(str(r["model_name"])), html.escape(r["mode"]), r["stable_version"], r["candidate_version"],
            r["paired"] if r["mode"] == SHADOW else f'{r["stable_rows"]} / {r["candidate_rows"]}',
            _percent(r["decision_agreement"]), _number(r["score_distance"]), _number(r["ks_statistic"]),
            _number(r["ks_pvalue"]), f'{_percent(r["stable_positive_rate"])} / '
                                     f'{_percent(r["candidate_positive_rate"])}')) + "</tr>")
    return ("<h2 id='agreement'>Production vs candidate</h2>"
            "<table><tr><th>model</th><th>mode</th><th>production</th><th>candidate</th>"
            "<th>rows (paired, or production / candidate)</th><th>decisions agree</th>"
            "<th>score distance (Jensen-Shannon)</th><th>K-S statistic</th><th>K-S p-value</th>"
            "<th>positive rate (production / candidate)</th></tr>" + "".join(rows) + "</table>"
            f"<p class='muted'>shadow: the candidate ran on the calls production answered (same request id, "
            f"never returned), rows paired; canary: each answered calls of its own, distributions compared. "
            f"Decisions at decision_threshold {results[0]['decision_threshold']:g}; score histograms on "
            f"{BINS} bins of [0, 1].</p>")


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1%}"


def _number(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"
