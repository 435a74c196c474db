"""Canary and shadow traffic: which version answers a request that names no version
and no label, and which of those requests also run on the candidate.

Settings: ``canary_percent`` and ``shadow_percent`` (percentages of requests),
``canary_label`` and ``stable_label`` (version labels, ``version_labels`` or the
model config file's ``version_labels``). Both percentages 0 (the default): no
``TrafficSplit`` exists and requests are served as TF Serving serves them.

* Routing (``TrafficSplit.takes_canary``, called by ``ModelManager.acquire`` under
  its lock): only while the canary label names a loaded version, ``canary_percent``
  of the requests that name no version and no label go to it (a random draw per
  request); the rest go where they go without a split (``core.served.default_version``,
  precomputed by the manager: the stable label's version when it is loaded, else the
  newest loaded version that is not the canary). Requests naming a version or a
  label are never rerouted.
* Shadow (``TrafficSplit.wants_shadow``, after the answer is sent): ``shadow_percent``
  of the routed requests answered by another version also run on the canary's
  version, off the request path; the answer is logged as that version's, tagged
  ``core.request_log.SHADOW_TAG``, under the same request id, and never returned.
  At most ``max_in_flight`` shadow runs at once (a quarter of the model threads):
  more are dropped and counted, so shadow load never takes the production calls'
  threads.

Metrics: ``ROUTED`` (requests routed, by version and route), ``SHADOW_CALLS``
(shadow runs by version and outcome), ``SHADOW_DROPPED`` (by reason).
"""
import os
import random
from typing import Dict, Optional

from serving import metrics as M

ROUTED = "tfxops_serving_routed_requests_total"        # {model_name, version, route}: canary | stable
SHADOW_CALLS = "tfxops_serving_shadow_calls_total"     # {model_name, version, outcome}: logged | failed
SHADOW_DROPPED = "tfxops_serving_shadow_dropped_total"  # {model_name, reason}: busy | not_loaded | not_logged
CANARY, STABLE = "canary", "stable"                    # the ROUTED metric's route label
BUSY, NOT_LOADED, NOT_LOGGED = "busy", "not_loaded", "not_logged"
LOGGED, FAILED = "logged", "failed"


class TrafficSplit:
    """The canary and shadow shares of the requests that name no version and no label."""

    def __init__(self, canary_percent: float, shadow_percent: float, canary_label: str,
                 stable_label: str, metrics: M.Metrics, max_in_flight: int = 1):
        self.canary_share = canary_percent / 100.0
        self.shadow_share = shadow_percent / 100.0
        self.canary_label = canary_label
        self.stable_label = stable_label
        self.metrics = metrics
        self.max_in_flight = max(1, max_in_flight)
        self.in_flight = 0                   # shadow runs started and not finished (the loop's thread only)
        self._random = random.random
        metrics.describe(ROUTED, "counter", "Requests naming no version or label, by the version that "
                                            "answered them and its route (canary or stable).")
        metrics.describe(SHADOW_CALLS, "counter", "Requests also run on the canary version (shadow), "
                                                  "by outcome; their answers are logged, never returned.")
        metrics.describe(SHADOW_DROPPED, "counter", "Shadow runs not made: too many at once (busy), "
                                                    "the canary not loaded, or the answered call not logged.")

    @classmethod
    def from_settings(cls, settings, metrics: M.Metrics) -> Optional["TrafficSplit"]:
        """The split the settings ask for; None when both percentages are 0 (off). Shadow
        runs at once: a quarter of the server's model threads (2 per CPU)."""
        if not settings.canary_percent and not settings.shadow_percent:
            return None
        return cls(settings.canary_percent, settings.shadow_percent, settings.canary_label,
                   settings.stable_label, metrics, (os.cpu_count() or 1) // 2)

    # ------------------------------------------------ routing
    def takes_canary(self) -> bool:
        """Whether this request naming no version and no label goes to the (loaded) canary."""
        return self.canary_share > 0 and self._random() < self.canary_share

    def canary_version(self, labels: Dict[str, int]) -> Optional[int]:
        return labels.get(self.canary_label)

    # ------------------------------------------------ shadow
    def wants_shadow(self, labels: Dict[str, int], answered_version: int) -> bool:
        """Whether a routed request answered by ``answered_version`` also runs on the canary."""
        canary = labels.get(self.canary_label)
        return (canary is not None and canary != answered_version and self.shadow_share > 0
                and self._random() < self.shadow_share)

    def start_shadow(self, model_name: str) -> bool:
        """Take a shadow slot; False (counted as dropped) when ``max_in_flight`` are running."""
        if self.in_flight >= self.max_in_flight:
            self.dropped(model_name, BUSY)
            return False
        self.in_flight += 1
        return True

    def finish_shadow(self, model_name: str, version: Optional[int], outcome: str) -> None:
        """Give the slot back; count the run (LOGGED, FAILED) or the drop (NOT_LOADED)."""
        self.in_flight -= 1
        if outcome == NOT_LOADED:
            self.dropped(model_name, NOT_LOADED)
        else:
            self.metrics.inc(SHADOW_CALLS, (("model_name", model_name), ("version", str(version)),
                                            ("outcome", outcome)))

    def dropped(self, model_name: str, reason: str) -> None:
        self.metrics.inc(SHADOW_DROPPED, (("model_name", model_name), ("reason", reason)))

    # ------------------------------------------------ counting
    def count_routed(self, model_name: str, version: int, labels: Dict[str, int]) -> None:
        """A routed request answered by ``version``, in ``ROUTED``."""
        route = CANARY if labels.get(self.canary_label) == version else STABLE
        self.metrics.inc(ROUTED, (("model_name", model_name), ("version", str(version)), ("route", route)))
