"""One MLflow run as the mirror writes it: its identity (the tags it is found by
again), parameters, metrics and tags, with names and values MLflow accepts."""
import dataclasses
import json
import math
import re
from typing import Dict

TAG = "tfxops."                      # every tag the mirror writes starts so
KEY_TAG = TAG + "mirror_key"         # what the run mirrors (an MLMD run, a window and version)
STORE_TAG = TAG + "mlmd.store"       # the MLMD store it was read from (one MLflow store may serve several)
COMPLETE_TAG = TAG + "mirror_complete"   # written last: a run without it is written again
MAX_VALUE = 5000                     # characters kept of a parameter or tag value
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")   # MLflow's metric/param name characters


@dataclasses.dataclass
class RunRecord:
    key: str                          # with ``store``: the run's identity (idempotence)
    store: str
    name: str
    status: str                       # FINISHED | FAILED
    start_ms: int
    end_ms: int
    params: Dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    tags: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.key = self.key.replace("'", "_")       # it is quoted in the search filter

    def param(self, name: str, value) -> None:
        if value is not None and value != "":
            self.params[metric_name(name)] = text(value)

    def metric(self, name: str, value) -> None:
        """A number (bools as 0/1); None and NaN are left out (MLflow would chart NaN as 0)."""
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and not math.isnan(value):
            self.metrics[metric_name(name)] = float(value)

    def tag(self, name: str, value) -> None:
        if value is not None and value != "":
            self.tags[TAG + name] = text(value)


def metric_name(name: str) -> str:
    """``name`` with every character MLflow refuses (e.g. ``=`` ``,`` ``(``) as ``_``."""
    return _NOT_IN_NAME.sub("_", name)[:250]


def text(value) -> str:
    """A value as MLflow's parameter/tag text: lists and dicts as JSON, cut to MAX_VALUE."""
    shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return shown if len(shown) <= MAX_VALUE else shown[:MAX_VALUE - 1] + "…"


def key_filter(key: str) -> str:
    """The search filter that finds the runs mirroring ``key``."""
    return f"tags.`{KEY_TAG}` = '{key}'"
