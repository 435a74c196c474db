"""Out-of-domain requests per window and served version: how many of a version's
requests had values outside its input domain (``core.domain``), per feature, from
the marks the server leaves in the request log (``core.request_log``,
``LoggedRequest.out_of_domain``): answered calls marked under
``out_of_domain_action=log``, and calls refused under ``reject`` (their rejected
records carry the same mark).

The rate of a feature is the share of the version's requests in the window
(answered and rejected) marked with it. At or above ``alert_out_of_domain_rate``
(0: never) a version whose decision was none gets an ``alert``: reported, never
acted on, since a retrain on such traffic would learn from inputs the model was
never meant for; a person judges whether a client is broken or probing, or
whether the domain itself should grow.

Only records holding the mark are decoded: a file part without the mark's bytes
is read once and skipped.
"""
import dataclasses
import logging
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from core import request_log
from core.config import Settings
from monitoring import policy, window as window_lib

log = logging.getLogger("tfxops.monitoring")
_MARK = request_log.OUT_OF_DOMAIN_TAG.encode()


@dataclasses.dataclass
class OutOfDomainRates:
    """One version's out-of-domain requests in a window."""
    requests: int                  # the version's requests in the window, answered and rejected
    marked: int = 0                # requests with a value out of domain (any feature)
    rejected: int = 0              # of those, refused (out_of_domain_action reject)
    features: Dict[str, int] = dataclasses.field(default_factory=dict)   # feature -> requests marked with it
    threshold: float = 0.0         # alert_out_of_domain_rate (0: no alert)

    def rate(self, count: int) -> float:
        return count / self.requests if self.requests else 0.0

    @property
    def alerting(self) -> List[str]:
        """The features whose rate reaches the threshold (none when it is 0)."""
        if self.threshold <= 0:
            return []
        return [name for name, count in self.ordered() if self.rate(count) >= self.threshold]

    def ordered(self) -> List[Tuple[str, int]]:
        return sorted(self.features.items(), key=lambda item: (-item[1], item[0]))

    def finding(self) -> str:
        return ("out-of-domain inputs: " + ", ".join(
            f"{name} in {self.rate(self.features[name]):.1%} of {self.requests} requests" for name in self.alerting)
            + f" (alert_out_of_domain_rate {self.threshold:g})")

    def as_dict(self) -> Dict:
        return {"requests": self.requests, "marked": self.marked, "rejected": self.rejected,
                "rate": self.rate(self.marked), "threshold": self.threshold, "alerting": self.alerting,
                "features": [{"feature": name, "requests": count, "rate": self.rate(count)}
                             for name, count in self.ordered()]}


@dataclasses.dataclass
class _Tally:
    marked: int = 0
    rejected: int = 0
    features: Counter = dataclasses.field(default_factory=Counter)


def tally(parts: Sequence[window_lib.Part]) -> Dict[Tuple[str, Optional[int]], _Tally]:
    """(model name, version) -> the marked requests of the window's ``parts``."""
    found: Dict[Tuple[str, Optional[int]], _Tally] = {}
    for part in parts:
        try:
            with open(part.path, "rb") as handle:
                data = handle.read()
            if _MARK not in data[part.start:part.end]:
                continue
            records = window_lib.read_part(part).records
        except (OSError, window_lib.CorruptLogError):
            continue               # unreadable: triaged (and not counted) by the window's reading
        for record in records:
            if _MARK in record:
                _count(found, record)
    return found


def _count(found: Dict[Tuple[str, Optional[int]], _Tally], record: bytes) -> None:
    try:
        (call,) = request_log.decode_records([record])
    except request_log.UnreadableRecord:
        return
    counts = found.setdefault((call.model_name, call.model_version), _Tally())
    counts.marked += 1
    counts.rejected += call.error is not None
    counts.features.update(call.out_of_domain)


def judge(settings: Settings, window: window_lib.Window, versions: List) -> None:
    """Each judged version's (``monitoring.result.VersionResult``) ``out_of_domain``
    rates; a version over ``alert_out_of_domain_rate`` gets an alert unless it is acted on."""
    counts = tally(window.parts)
    for version in versions:
        found = counts.get((version.model_name, version.version), _Tally())
        version.out_of_domain = OutOfDomainRates(version.requests, found.marked, found.rejected,
                                                 dict(found.features), settings.alert_out_of_domain_rate)
        if version.out_of_domain.alerting:
            version.decision = alerted(version.decision, version.out_of_domain.finding())


def alerted(decision: policy.Decision, finding: str) -> policy.Decision:
    """``decision`` with the out-of-domain finding: an alert when it was none, among the
    reasons of an alert or an action."""
    reasons = [finding] + list(decision.reasons)
    if decision.action != policy.NONE:
        return dataclasses.replace(decision, reasons=reasons)
    return dataclasses.replace(
        decision, action=policy.ALERT, triggered=True, reasons=reasons,
        because=f"alert, not acted on: {finding}; a retrain would learn from inputs the model was never "
                "trained for: find the client that sends them (broken, or probing), or widen the domain by "
                "training on such data on purpose")


def render_html(rates: Optional[Dict]) -> str:
    """The report's section for a version's ``as_dict`` (empty when nothing was marked)."""
    import html

    if not rates or not rates["marked"]:
        return ""
    cls = "act" if rates["alerting"] else "warn"
    rows = "".join(f"<tr><td{' class=bad' if f['feature'] in rates['alerting'] else ''}>{html.escape(f['feature'])}"
                   f"</td><td class='num'>{f['requests']}</td><td class='num'>{f['rate']:.2%}</td></tr>"
                   for f in rates["features"])
    return (f"<h3>Out-of-domain inputs</h3><div class='box {cls}'><b>{rates['marked']} of {rates['requests']} "
            f"requests ({rates['rate']:.2%}) had values outside the version's input domain</b>; "
            f"{rates['rejected']} of them refused"
            + (f" · alert threshold {rates['threshold']:g}" if rates["threshold"] else "")
            + "</div><table><tr><th>feature</th><th class='num'>requests</th><th class='num'>share</th></tr>"
            + rows + "</table>")
