"""What a monitor pass found and did: the typed result that the report, the CLI
(``--json``), the demo and the tests read. ``to_dict`` is the JSON report's shape."""
import dataclasses
import json
from typing import Dict, List, Optional

from monitoring import baseline as baseline_lib, checks, contract as contract_lib, policy, report
from monitoring.agreement import AgreementResult
from monitoring.bias import BiasDrift
from monitoring.attribution_drift import AttributionDrift
from monitoring.out_of_domain import OutOfDomainRates
from monitoring.probing import Probing
from monitoring import rejections as rejections_lib
from monitoring.reuse import ReuseCandidate

ANALYSED, INCOMPLETE, NO_NEW_REQUESTS = "analysed", "incomplete", "no_new_requests"


@dataclasses.dataclass
class NotJudged:
    """A version in the window without lineage in MLMD: counted, not judged."""
    model_name: str
    version: Optional[int]
    rows: int
    requests: int
    reason: str

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class VersionResult:
    """One served version's window: what was measured, decided and done."""
    model_name: str
    version: Optional[int]
    current: bool
    rows: int
    requests: int
    rejections: rejections_lib.Summary
    baseline: baseline_lib.Baseline
    relaxed: List[contract_lib.Relaxed]
    features: List[checks.FeatureResult]
    prediction: Dict
    quality: Dict
    reuse_candidates: List[ReuseCandidate]
    decision: policy.Decision
    statistics: str                        # the window's statistics file
    distributions: Dict[str, Optional[Dict]]
    mlmd: Optional[Dict] = None            # the ids of the MLMD record (``monitor.record``)
    bias: Optional[BiasDrift] = None       # the sensitive slices vs the Evaluator's (``monitoring.bias``)
    attribution: Optional[AttributionDrift] = None   # the features it relies on vs at push (``monitoring.attribution_drift``)
    out_of_domain: Optional[OutOfDomainRates] = None  # requests marked out of its input domain (``monitoring.out_of_domain``)
    probing: Optional[Probing] = None      # per-client volume and probing signals (``monitoring.probing``)
    redaction: Optional[Dict] = None       # features the logs do not hold as sent (``monitoring.redacted``)

    @property
    def flagged_features(self) -> List[str]:
        """The features flagged, [] when the window had too few rows to be judged."""
        if self.decision.not_judged:
            return []
        return sorted(f.name for f in self.features if f.flagged)

    @property
    def skewed_features(self) -> List[str]:
        return sorted(f.name for f in self.features if f.over_skew)

    @property
    def anomalous_features(self) -> List[str]:
        return sorted(f.name for f in self.features if f.anomalies)

    @property
    def error_anomalies(self) -> int:
        return sum(f.error_anomalies for f in self.features)

    def to_dict(self) -> Dict:
        return {
            "model_name": self.model_name, "version": self.version, "current": self.current,
            "rows": self.rows, "requests": self.requests, "rejections": self.rejections.as_dict(),
            "baseline": self.baseline.describe(), "relaxed": [r.as_dict() for r in self.relaxed],
            "features": [f.as_dict() for f in self.features],
            "flagged_features": self.flagged_features, "skewed_features": self.skewed_features,
            "anomalous_features": self.anomalous_features, "error_anomalies": self.error_anomalies,
            "prediction": self.prediction, "quality": self.quality,
            "reuse_candidates": [c.to_dict(with_path=False) for c in self.reuse_candidates],
            "decision": self.decision.to_dict(), "statistics": self.statistics,
            "distributions": self.distributions, "mlmd": self.mlmd,
            "bias": self.bias.to_dict() if self.bias is not None else None,
            "attribution": self.attribution.as_dict() if self.attribution is not None else None,
            "out_of_domain": self.out_of_domain.as_dict() if self.out_of_domain is not None else None,
            "probing": self.probing.as_dict() if self.probing is not None else None, "redaction": self.redaction}


@dataclasses.dataclass
class ReportPaths:
    json: str
    html: str

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


# The keys of each kind of result, in the JSON report's order.
KEYS = {
    NO_NEW_REQUESTS: ("status", "window", "rows", "log_dir"),
    INCOMPLETE: ("status", "window", "rows", "files", "incomplete_files", "quarantined_files", "dry_run"),
    ANALYSED: ("status", "window", "resumed", "dry_run", "started", "finished", "seconds", "files",
               "quarantined_files", "incomplete_files", "rows", "not_judged", "requests",
               "unattributed_rejections", "decision", "versions", "agreement", "report", "timings"),
}


@dataclasses.dataclass
class MonitorResult:
    """One monitor pass: ``analysed`` (a window judged and committed), ``incomplete``
    (every file of the window still being written: nothing committed), or
    ``no_new_requests``."""
    status: str
    window: Optional[str] = None
    rows: int = 0
    log_dir: Optional[str] = None                       # no_new_requests: where it looked
    resumed: bool = False                               # a crashed pass's window, again
    dry_run: bool = False
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    files: List[str] = dataclasses.field(default_factory=list)
    quarantined_files: List[Dict] = dataclasses.field(default_factory=list)   # ``logfiles.Triage``
    incomplete_files: List[Dict] = dataclasses.field(default_factory=list)
    not_judged: List[NotJudged] = dataclasses.field(default_factory=list)
    requests: int = 0
    unattributed_rejections: Optional[rejections_lib.Summary] = None   # refused before a version was chosen
    decision: Optional[policy.Decision] = None
    versions: List[VersionResult] = dataclasses.field(default_factory=list)
    agreement: List[AgreementResult] = dataclasses.field(default_factory=list)   # production vs candidate
    report: Optional[ReportPaths] = None
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """An action was taken and failed."""
        return self.decision is not None and self.decision.failed

    def to_dict(self) -> Dict:
        return {key: _plain(getattr(self, key)) for key in KEYS[self.status]}

    def to_json(self, brief: bool = False) -> str:
        """The JSON report (``brief``: without the per-feature detail and distributions,
        as ``tfxops monitor --json`` prints it)."""
        document = self.to_dict()
        if brief:
            versions = document.pop("versions", [])
            document["versions"] = [{k: v for k, v in version.items() if k not in ("distributions", "features")}
                                    for version in versions]
        return json.dumps(report.json_safe(document), indent=2)

    def summary_line(self) -> str:
        if self.status == INCOMPLETE:
            return f"window {self.window}: {self._files_line()}; nothing else to read yet"
        if self.status != ANALYSED:
            return "no new requests"
        flagged = sorted({f for v in self.versions for f in v.flagged_features})
        too_few = [f"version {v.version}: {v.decision.not_judged}" for v in self.versions if v.decision.not_judged]
        judged = f"flagged: {', '.join(flagged) or 'none'}; " if len(too_few) < len(self.versions) else ""
        because = "" if self.decision.because == self.decision.not_judged else f" ({self.decision.because})"
        rejected = [v.rejections.line() for v in self.versions if v.rejections.rejected]
        if self.unattributed_rejections:
            rejected.append(f"no model version: {self.unattributed_rejections.line()}")
        unjudged = ", ".join(f"version {v.version} ({v.rows} rows)" for v in self.not_judged)
        biased = [f"bias drift (version {v.version}): "
                  f"{', '.join(v.bias.flagged_slices) or 'the gaps between slices'}"
                  for v in self.versions if v.bias is not None and v.bias.flagged]
        return (f"window {self.window}: {self.rows} rows, {self._files_line()}; "
                + "".join(f"{line}; " for line in rejected)
                + (f"not judged (no lineage): {unjudged}; " if unjudged else "")
                + "".join(f"{line}; " for line in biased)
                + "".join(f"possible probing (version {v.version}): client(s) "
                          f"{', '.join(c.client for c in v.probing.flagged)}; " for v in self.versions
                          if v.probing is not None and v.probing.flagged)
                + "".join(f"attribution drift (version {v.version}): NDCG {v.attribution.ndcg:.3f} < "
                          f"{v.attribution.threshold:g}; " for v in self.versions
                          if v.attribution is not None and v.attribution.drifted)
                + "".join(f"{line}; " for line in too_few) + judged
                + f"decision: {self.decision.action}{because}; report: {self.report.html}")

    def _files_line(self) -> str:
        incomplete = len(self.incomplete_files)
        return f"{len(self.quarantined_files)} file(s) quarantined" + (
            f", {incomplete} file(s) incomplete (retried next run)" if incomplete else "")


def _plain(value):
    """A result's value as JSON-shaped data."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
