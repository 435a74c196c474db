"""Prometheus metrics at ``/monitoring/prometheus/metrics``, in the text exposition
format, under TF Serving's names where TF Serving defines one:

* ``:tensorflow:serving:request_count{model_name,status}``: requests by outcome
  (``status`` is "OK" or the TF Serving error code name).
* ``:tensorflow:serving:request_latency{model_name,API,entrypoint}``: histogram of
  request latency in microseconds (TF Serving's buckets: 10 µs * 1.8^i).
* ``:tensorflow:serving:batching_session:processed_batch_size{...}``: batch sizes.

and ours, prefixed ``tfxops_serving_``: logged / dropped / sampled-out requests,
model versions loaded and load failures.
"""
import bisect
import threading
from collections import defaultdict
from typing import Dict, List, Tuple

# TF Serving's request_latency buckets (microseconds): 10 * 1.8^i, 33 buckets.
LATENCY_BUCKETS_US: List[float] = [10 * 1.8 ** i for i in range(33)]
BATCH_BUCKETS: List[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def _labels(pairs: Tuple[Tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    def esc(v):
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}"


class _Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """Counters, gauges and histograms keyed by (name, labels); thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: Dict[str, Dict[tuple, float]] = defaultdict(dict)
        self._gauges: Dict[str, Dict[tuple, float]] = defaultdict(dict)
        self._hists: Dict[str, Dict[tuple, _Histogram]] = defaultdict(dict)
        self._help: Dict[str, Tuple[str, str]] = {}

    def describe(self, name: str, kind: str, text: str):
        self._help[name] = (kind, text)

    def inc(self, name: str, labels: Tuple[Tuple[str, str], ...] = (), value: float = 1.0):
        with self._lock:
            series = self._counters[name]
            series[labels] = series.get(labels, 0.0) + value

    def set(self, name: str, labels: Tuple[Tuple[str, str], ...] = (), value: float = 0.0):
        with self._lock:
            self._gauges[name][labels] = value

    def observe(self, name: str, labels: Tuple[Tuple[str, str], ...], value: float,
                buckets: List[float]):
        with self._lock:
            hist = self._hists[name].get(labels)
            if hist is None:
                hist = self._hists[name][labels] = _Histogram(buckets)
            hist.observe(value)

    def count_and_observe(self, counter: str, counter_labels: Tuple[Tuple[str, str], ...],
                          hist: str, hist_labels: Tuple[Tuple[str, str], ...], value: float,
                          buckets: List[float]):
        """``inc(counter)`` and ``observe(hist)`` under one lock (once per request)."""
        with self._lock:
            series = self._counters[counter]
            series[counter_labels] = series.get(counter_labels, 0.0) + 1.0
            h = self._hists[hist].get(hist_labels)
            if h is None:
                h = self._hists[hist][hist_labels] = _Histogram(buckets)
            h.observe(value)

    def value(self, name: str, labels: Tuple[Tuple[str, str], ...] = ()) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(labels, self._gauges.get(name, {}).get(labels, 0.0))

    def render(self) -> str:
        out: List[str] = []
        with self._lock:
            for kind, table in (("counter", self._counters), ("gauge", self._gauges)):
                for name in sorted(table):
                    out.append(f"# HELP {name} {self._help.get(name, (kind, name))[1]}")
                    out.append(f"# TYPE {name} {kind}")
                    for labels, value in sorted(table[name].items()):
                        out.append(f"{name}{_labels(labels)} {value:g}")
            for name in sorted(self._hists):
                out.append(f"# HELP {name} {self._help.get(name, ('histogram', name))[1]}")
                out.append(f"# TYPE {name} histogram")
                for labels, hist in sorted(self._hists[name].items()):
                    cumulative = 0
                    for bound, count in zip(hist.buckets + [float("inf")], hist.counts):
                        cumulative += count
                        le = "+Inf" if bound == float("inf") else f"{bound:g}"
                        out.append(f"{name}_bucket{_labels(labels + (('le', le),))} {cumulative}")
                    out.append(f"{name}_sum{_labels(labels)} {hist.sum:g}")
                    out.append(f"{name}_count{_labels(labels)} {hist.count}")
        return "\n".join(out) + "\n"


UNKNOWN_MODEL = "unknown"      # the model_name label of requests for a model not served
APIS = frozenset({"predict", "classify", "regress", "metadata", "status", "multi_inference",
                  "reload"})   # the API label's values; any other method a URL names:
OTHER_API = "other"


class ModelNames:
    """The ``model_name`` label values a proxy may use: names its upstream answered
    successfully (at most ``limit``); any other name counts as ``unknown``, so
    callers cannot create series (request names come from them)."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._known: set = set()

    def label(self, name: str) -> str:
        return name if name in self._known else UNKNOWN_MODEL

    def answered(self, name: str) -> None:
        if name not in self._known and len(self._known) < self.limit:
            self._known.add(name)


REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
LOGGED = "tfxops_serving_request_log_records_total"
LOG_DROPPED = "tfxops_serving_request_log_dropped_total"
LOG_FILES = "tfxops_serving_request_log_files_total"
LOG_ERRORS = "tfxops_serving_request_log_write_errors_total"
BATCH_REQUESTS = "tfxops_serving_batch_requests"
VERSION_EVENTS = "tfxops_serving_model_version_events_total"
VERSIONS_AVAILABLE = "tfxops_serving_model_versions_available"
INTEGRITY_FAILURES = ":tensorflow:serving:tfxops_model_integrity_failures"   # core/integrity.py (issue 16 part 1)
OUT_OF_DOMAIN_COUNT = ":tensorflow:serving:tfxops_out_of_domain_count"   # serving/domain_check.py (issue 16 part 4)
ACCESS_DENIED = "tfxops_serving_access_denied_total"     # serving/access.py (issue 16 part 2)


def new_metrics() -> Metrics:
    m = Metrics()
    m.describe(REQUEST_COUNT, "counter", "The total number of requests (TF Serving's name).")
    m.describe(REQUEST_LATENCY, "histogram",
               "Distribution of request latency in microseconds (TF Serving's name).")
    m.describe(BATCH_SIZE, "histogram", "Rows per model call when batching (TF Serving's name).")
    m.describe(BATCH_REQUESTS, "histogram", "Requests per batched model call.")
    m.describe(LOGGED, "counter", "PredictionLog records written to request logs.")
    m.describe(LOG_DROPPED, "counter", "Requests not logged because the log queue was full.")
    m.describe(LOG_FILES, "counter", "Request log files closed (complete, readable).")
    m.describe(LOG_ERRORS, "counter", "Errors writing request logs.")
    m.describe(VERSION_EVENTS, "counter", "Model version state changes, by state.")
    m.describe(VERSIONS_AVAILABLE, "gauge", "Model versions currently AVAILABLE.")
    m.describe(INTEGRITY_FAILURES, "counter", "Model versions refused before loading: their files differ "
                                              "from their manifest, or its signature is bad or missing.")
    m.describe(OUT_OF_DOMAIN_COUNT, "counter", "Calls with a value of the feature outside the answering "
                                               "version's input domain (answered and marked, or refused).")
    m.describe(ACCESS_DENIED, "counter", "Calls refused for a missing or wrong token "
                                         "(UNAUTHENTICATED) or a client's rate (RESOURCE_EXHAUSTED).")
    return m
