"""A bounded sample of the rows a model version served in a window (the attribution
drift check explains it: ``monitoring.attribution_drift``).

Bottom-k sampling: every answered row gets a priority, a 64-bit hash of its
request id and its index in the request, and the sample keeps the ``capacity``
rows of lowest priority. The hash is a fixed function of the row, so the sample
is a uniform one (over distinct rows) that does not depend on the order the rows
were read in, nor on how the files were split among workers or Beam bundles:
two samples merge into the sample of the union (``merge``), and the local and
Beam engines keep the same rows. Its first ``k`` rows (by priority) are the
bottom-``k`` sample itself, for any ``k`` up to the capacity.
"""
import dataclasses
import zlib
from typing import Iterable, List, Sequence

import numpy as np

SAMPLE_ROWS = 1000       # rows kept per version and window: the most a window's check explains

_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def priorities(request_ids: Sequence[str], row_in_request: np.ndarray) -> np.ndarray:
    """Each row's priority: SplitMix64's finaliser over (CRC-32 of the request id,
    row index), as unsigned 64-bit integers."""
    ids = np.fromiter((zlib.crc32(rid.encode()) for rid in request_ids), np.uint64, len(request_ids))
    z = (ids << np.uint64(32)) | np.asarray(row_in_request).astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


@dataclasses.dataclass
class RowSample:
    """The ``capacity`` served rows (serialized tf.Examples) of lowest priority so far,
    lowest first."""
    capacity: int = SAMPLE_ROWS
    keys: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))
    rows: List[bytes] = dataclasses.field(default_factory=list)

    def add(self, serialized: Sequence[bytes], request_ids: Sequence[str], row_in_request: np.ndarray) -> None:
        """Offer a chunk's answered rows."""
        if self.capacity <= 0 or not len(serialized):
            return
        keys = priorities(request_ids, row_in_request)
        chosen = np.arange(len(keys))
        if len(self.rows) >= self.capacity:         # only rows that beat the sample's highest can enter
            chosen = np.flatnonzero(keys < self.keys[-1])
        if chosen.size:
            self._keep(keys[chosen], [serialized[i] for i in chosen])

    def merge(self, other: "RowSample") -> None:
        """Add the rows of a sample of other rows (another worker's, another file's)."""
        self.capacity = max(self.capacity, other.capacity)
        self._keep(other.keys, other.rows)

    @classmethod
    def merged(cls, samples: Iterable["RowSample"]) -> "RowSample":
        """One sample of the rows of ``samples`` (a Beam combiner: associative and commutative)."""
        out = cls(capacity=0)
        for sample in samples:
            out.merge(sample)
        return out

    def _keep(self, keys: np.ndarray, rows: List[bytes]) -> None:
        keys = np.concatenate([self.keys, keys])
        rows = self.rows + list(rows)
        order = np.argsort(keys, kind="stable")[:self.capacity]
        self.keys, self.rows = keys[order], [rows[i] for i in order]
