"""Extraction and probing signals: who queried a served version in a window, how
much, and whether a client's queries look like model extraction or
membership-inference probing rather than use.

While the window is read (both engines, ``traffic.add_part``), each version tallies
per client (``LoggedRequest.client``: the token's name with authentication on, else
the peer's address; "" in older logs, shown as ``unknown``): answered requests and
rows, rejected requests, every answered row's served score, and a bounded sample of
its rows (``sample.RowSample``, ``SAMPLE_ROWS`` per client). Then two statistics per
client with at least ``probing_min_rows`` answered rows, each against the same
statistic over all other clients' rows pooled ("the other traffic"):

* near-boundary share: the share of its rows whose served score is within
  ``probing_boundary_margin`` of ``decision_threshold``. Use lands where the data
  lies; an attacker tracing the decision boundary (decision-based extraction) or
  testing records whose confidence tells membership queries around it.
* sweep: for each numeric model input (``GRID_FEATURES``), the rows' distribution
  over the training deciles of that input (the bins of its QUANTILES histogram in
  the served model's training statistics, plus one bin for "missing"), its total
  variation distance from the training data's (0: as in training, 1: disjoint),
  averaged over the inputs. A sweep of the input space (a grid, or values drawn
  uniformly over a range) piles rows into the few deciles that span most of the
  range; traffic drawn from the data's own distribution does not.

A client is flagged when a statistic reaches its floor (``probing_min_boundary_share``,
``probing_min_sweep``) and is at least ``probing_ratio`` times the other traffic's,
so a window whose traffic moved as a whole (drift: the skew checks' business)
flags nobody. The finding says it in words a person can check against the logs:
"client X: 62% of its 400 rows within 0.05 of the threshold 0.5 vs 1% of the other
traffic's 9000". Without other traffic (a single client) nothing is judged.

A flagged client makes the window an ``alert`` (``probing_alert``), never a retrain:
the model is not wrong, someone is querying it. What it cannot tell: an attacker
who queries with rows drawn like real traffic, spread over many clients, or under
``probing_min_rows`` per window, looks like use; a legitimate client with unusual
inputs (a new city, a batch of edge cases) can be flagged.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from core import features as F
from core.config import Settings
from monitoring import checks
from monitoring.sample import RowSample

SAMPLE_ROWS = 500           # rows per client kept for the sweep statistic
GRID_FEATURES = tuple(F.DENSE_FLOAT_FEATURES + F.BUCKET_FEATURES)
UNKNOWN = "unknown"         # a client the log does not name


def client_name(client: str) -> str:
    return client or UNKNOWN


# ------------------------------------------------------------------ the tally, while reading
@dataclasses.dataclass
class ClientCount:
    """One client's traffic to one version in a window."""
    requests: int = 0                       # answered requests
    rows: int = 0                           # answered rows
    rejected: int = 0                       # rejected requests
    scores: List[np.ndarray] = dataclasses.field(default_factory=list)   # served scores of its rows
    sample: RowSample = dataclasses.field(default_factory=lambda: RowSample(capacity=SAMPLE_ROWS))

    def merge(self, other: "ClientCount") -> None:
        self.requests += other.requests
        self.rows += other.rows
        self.rejected += other.rejected
        self.scores.extend(other.scores)
        self.sample.merge(other.sample)

    def all_scores(self) -> np.ndarray:
        return np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)


@dataclasses.dataclass
class ClientTally:
    """Per client (its name as logged): what it sent one version in a window."""
    clients: Dict[str, ClientCount] = dataclasses.field(default_factory=dict)

    def count(self, client: str) -> ClientCount:
        return self.clients.get(client) or self.clients.setdefault(client, ClientCount())

    def add(self, chunk) -> None:
        """A ``window.Chunk``'s answered rows, by the client that sent each."""
        if not chunk.clients:
            return
        names, inverse = np.unique(np.asarray(chunk.clients, dtype=object), return_inverse=True)
        firsts = np.asarray(chunk.row_in_request) == 0
        for k, name in enumerate(names):
            rows = np.flatnonzero(inverse == k)
            count = self.count(str(name))
            count.rows += int(rows.size)
            count.requests += int(firsts[rows].sum())
            count.scores.append(np.asarray(chunk.predictions, np.float32)[rows])
            count.sample.add([chunk.serialized[i] for i in rows], [chunk.request_ids[i] for i in rows],
                             np.asarray(chunk.row_in_request)[rows])

    def add_rejected(self, part) -> None:
        """A ``window.Rejected`` part's requests, by client."""
        for client in part.clients if part is not None else ():
            self.count(client).rejected += 1

    def merge(self, other: "ClientTally") -> None:
        for client, theirs in other.clients.items():
            self.count(client).merge(theirs)


# ------------------------------------------------------------------ the statistics
@dataclasses.dataclass(frozen=True)
class ClientFigures:
    """One client's volume and statistics (None: not judged), and its finding if flagged."""
    client: str
    requests: int
    rows: int
    rejected: int
    boundary_share: Optional[float] = None
    sweep: Optional[float] = None
    findings: Tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        return bool(self.findings)

    def as_dict(self) -> Dict:
        return {**dataclasses.asdict(self), "findings": list(self.findings), "flagged": self.flagged}


@dataclasses.dataclass(frozen=True)
class Probing:
    """A version's clients in a window: the top ones by volume and every flagged one."""
    clients: List[ClientFigures]
    total_clients: int
    threshold: float
    margin: float
    ratio: float
    features: Tuple[str, ...]               # the inputs of the sweep statistic
    note: str = ""                          # why nothing was judged, when so

    @property
    def flagged(self) -> List[ClientFigures]:
        return [c for c in self.clients if c.flagged]

    def finding(self) -> str:
        """Every flagged client's findings, in words."""
        return "possible model extraction or membership-inference probing: " + "; ".join(
            line for c in self.flagged for line in c.findings)

    def as_dict(self) -> Dict:
        return {"clients": [c.as_dict() for c in self.clients], "total_clients": self.total_clients,
                "flagged_clients": [c.client for c in self.flagged], "threshold": self.threshold,
                "margin": self.margin, "ratio": self.ratio, "features": list(self.features), "note": self.note}


def judge(settings: Settings, tally: ClientTally, train_stats, left_out=frozenset()) -> Probing:
    """Every client of ``tally`` against the other traffic (see the module's
    docstring); ``train_stats``: the served model's training statistics (the deciles);
    ``left_out``: features the logs do not hold as sent (``core.redact``)."""
    features = tuple(f for f in GRID_FEATURES if f not in left_out)
    grid = Grid.of(train_stats, features)
    counts = {client_name(c): n for c, n in tally.clients.items()}
    summaries = {c: Summary.of(settings, n, grid) for c, n in counts.items()} if len(counts) > 1 else {}
    total = Summary.total(summaries.values(), grid)
    figures = [_judged(settings, client, count, summaries.get(client), total, grid)
               for client, count in counts.items()]
    top = sorted(figures, key=lambda c: (-c.rows, c.client))
    shown = top[:max(0, settings.probing_top_clients)] + [c for c in top[settings.probing_top_clients:] if c.flagged]
    note = "" if len(counts) > 1 else "one client in the window: no other traffic to compare with"
    return Probing(shown, len(counts), settings.decision_threshold, settings.probing_boundary_margin,
                   settings.probing_ratio, grid.features, note)


@dataclasses.dataclass
class Summary:
    """What the statistics need of some traffic: answered rows, scored rows, scored
    rows near the boundary, and its sampled rows per input and bin."""
    rows: int
    scored: int
    near: int
    bins: np.ndarray                       # [inputs, bins]: sampled rows (``Grid.counts``)

    @classmethod
    def of(cls, settings: Settings, count: ClientCount, grid: "Grid") -> "Summary":
        scores = count.all_scores()
        scored = scores[~np.isnan(scores)]
        near = np.abs(scored - settings.decision_threshold) <= settings.probing_boundary_margin
        return cls(count.rows, int(scored.size), int(near.sum()), grid.counts(grid.cells(count.sample.rows)))

    @classmethod
    def total(cls, summaries, grid: "Grid") -> "Summary":
        out = cls(0, 0, 0, grid.counts(None))
        for s in summaries:
            out = out.plus(s, 1)
        return out

    def plus(self, other: "Summary", sign: int) -> "Summary":
        return Summary(self.rows + sign * other.rows, self.scored + sign * other.scored,
                       self.near + sign * other.near, self.bins + sign * other.bins)

    @property
    def near_share(self) -> Optional[float]:
        return self.near / self.scored if self.scored else None


def _judged(settings: Settings, client: str, count: ClientCount, mine: Optional[Summary], total: Summary,
            grid: "Grid") -> ClientFigures:
    """One client's figures against the other traffic's (the total without its own)."""
    plain = ClientFigures(client, count.requests, count.rows, count.rejected)
    if mine is None:
        return plain
    theirs = total.plus(mine, -1)
    if mine.rows < settings.probing_min_rows or theirs.rows < settings.probing_min_rows:
        return plain
    share, other_share = mine.near_share, theirs.near_share
    findings = []
    if share is not None and other_share is not None and _over(share, other_share, settings.probing_ratio,
                                                                  settings.probing_min_boundary_share):
        findings.append(f"client {client}: {share:.0%} of its {mine.scored} rows within "
                        f"{settings.probing_boundary_margin:g} of the decision threshold "
                        f"{settings.decision_threshold:g} vs {other_share:.1%} of the other traffic's "
                        f"{theirs.scored} (a boundary search)")
    sweep, other_sweep = grid.distance(mine.bins), grid.distance(theirs.bins)
    if sweep is not None and other_sweep is not None and _over(sweep, other_sweep, settings.probing_ratio,
                                                                settings.probing_min_sweep):
        findings.append(f"client {client}: its rows lie over the training deciles of {', '.join(grid.features)} "
                        f"unlike the training data, mean total variation {sweep:.2f} vs {other_sweep:.2f} for "
                        f"the other traffic (a sweep of the input space)")
    return dataclasses.replace(plain, boundary_share=share, sweep=sweep, findings=tuple(findings))


def _over(value: float, others: float, ratio: float, floor: float) -> bool:
    return value >= floor and value >= ratio * others


@dataclasses.dataclass(frozen=True)
class Grid:
    """Per input: the training deciles' edges and the training mass per bin (the
    last bin: missing)."""
    features: Tuple[str, ...]
    edges: Tuple[np.ndarray, ...]
    reference: Tuple[np.ndarray, ...]

    @classmethod
    def of(cls, train_stats, features: Tuple[str, ...]) -> "Grid":
        kept, edges, reference = [], [], []
        for name in features:
            stats = checks.feature_stats(train_stats, name) if train_stats is not None else None
            cdf = checks.quantile_cdf(stats)
            if cdf is None:
                continue
            bounds = np.unique(np.concatenate([cdf[1], cdf[2][-1:]]))
            mass = np.clip(np.diff([0.0] + [cdf[0](x) for x in bounds] + [1.0]), 0, None)
            common = stats.num_stats.common_stats
            missing = common.num_missing / max(1, common.num_missing + common.num_non_missing)
            kept.append(name)
            edges.append(bounds)
            reference.append(np.append(mass / max(mass.sum(), 1e-12) * (1 - missing), missing))
        return cls(tuple(kept), tuple(edges), tuple(reference))

    def cells(self, serialized: List[bytes]) -> Optional[np.ndarray]:
        """Each row's bin per input ([rows, inputs]; the last bin of an input: missing)."""
        if not serialized or not self.features:
            return None
        import tensorflow as tf

        out = np.zeros((len(serialized), len(self.features)), np.int32)
        for i, row in enumerate(serialized):
            feature_map = tf.train.Example.FromString(row).features.feature
            for j, name in enumerate(self.features):
                out[i, j] = self._bin(j, feature_map[name] if name in feature_map else None)
        return out

    def _bin(self, j: int, feature) -> int:
        kind = feature.WhichOneof("kind") if feature is not None else None
        values = getattr(feature, kind).value if kind in ("float_list", "int64_list") else ()
        if not values:
            return len(self.edges[j]) + 1           # missing
        return int(np.searchsorted(self.edges[j], float(values[0]), side="left"))

    @property
    def width(self) -> int:
        return max((len(r) for r in self.reference), default=0)

    def counts(self, cells: Optional[np.ndarray]) -> np.ndarray:
        """Rows per input and bin ([inputs, width], zeros past an input's bins)."""
        out = np.zeros((len(self.features), self.width), np.int64)
        for j in range(len(self.features)) if cells is not None else ():
            out[j] = np.bincount(cells[:, j], minlength=self.width)[:self.width]
        return out

    def distance(self, counts: np.ndarray) -> Optional[float]:
        """Mean over the inputs of the total variation between the rows' bins and training's."""
        rows = counts.sum(axis=1)
        if not len(rows) or rows[0] <= 0:
            return None
        distances = [0.5 * float(np.abs(counts[j, :len(ref)] / rows[j] - ref).sum())
                     for j, ref in enumerate(self.reference)]
        return float(np.mean(distances))


# ------------------------------------------------------------------ the report
def render_html(probing: Optional[Dict]) -> str:
    """The report's section: clients by volume, their statistics, the flagged ones."""
    import html

    if not probing:
        return ""
    e = html.escape
    out = [f"<h3>Clients: query volume and probing signals</h3><div class='muted'>{probing['total_clients']} "
           f"client(s); near the boundary: served score within {probing['margin']:g} of {probing['threshold']:g}; "
           f"sweep: mean total variation of the rows over the training deciles of "
           f"{e(', '.join(probing['features']) or 'no input')} (0: as in training); flagged at "
           f"{probing['ratio']:g}&times; the other traffic's and over the floor. {e(probing['note'])}</div>"]
    out.append("<table><tr><th>client</th><th class='num'>requests</th><th class='num'>rows</th>"
               "<th class='num'>rejected</th><th class='num'>near boundary</th><th class='num'>sweep</th>"
               "<th>finding</th></tr>")
    for c in probing["clients"]:
        share = "–" if c["boundary_share"] is None else f"{c['boundary_share']:.1%}"
        sweep = "–" if c["sweep"] is None else f"{c['sweep']:.2f}"
        out.append(f"<tr><td{' class=bad' if c['flagged'] else ''}>{e(c['client'])}</td>"
                   f"<td class='num'>{c['requests']}</td><td class='num'>{c['rows']}</td>"
                   f"<td class='num'>{c['rejected']}</td><td class='num'>{share}</td><td class='num'>{sweep}</td>"
                   f"<td>{e('; '.join(c['findings']))}</td></tr>")
    out.append("</table>")
    return "".join(out)
