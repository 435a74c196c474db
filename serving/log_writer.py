"""The request-log writer: a bounded queue and a writer thread producing rotated
PredictionLog files, and the recovery of the files of writers that died.

The record format, the file names and the TFRecord framing are ``core.request_log``'s;
this module decides when records reach the disk. Files are written under a hidden
``.<name>.tmp`` name and renamed when closed (after ``log_rotate_records`` records or
``log_rotate_seconds``), so every non-hidden file is complete. Readers (monitoring)
read ``core.request_log.closed_log_files()`` only.

Writing never blocks a request: ``submit`` appends the raw request/response
objects (or a function building the record) to a bounded queue, which costs the
event loop one ``deque.append`` — no lock, no thread wake-up, no protobuf work. A
writer thread wakes every ``DRAIN_SECONDS``, builds and serializes the queued
records and writes them in one go (few GIL hand-offs instead of one per request);
a full queue drops the record and counts it
(``tfxops_serving_request_log_dropped_total``). ``close()`` drains the queue and
closes the open file: a clean shutdown (SIGTERM) loses nothing.

What a crash can lose (the flush policy):

* ``kill -9``, an OOM kill, a crash of the process: every drain's records go to
  the operating system in one unbuffered ``write``, so only the records still
  queued are lost: the requests answered in the last ``DRAIN_SECONDS`` (50 ms)
  plus the time of one drain, never more than ``queue_size`` records. Every
  record counted by ``tfxops_serving_request_log_records_total`` is in the file.
* Power loss or a kernel crash: the open file is fsynced every ``FSYNC_SECONDS``
  (1 s) and before it is renamed, so about the last second of records.
* The open file of a killed writer stays behind as a hidden ``.<name>.tmp``.
  ``recover_orphans(directory)``, run by every ``RequestLogger.start()`` (and
  callable by the monitor), keeps every complete record of it (TFRecord framing
  and CRCs checked), drops a torn last record, and renames it to ``<name>``.
  A writer holds an exclusive ``fcntl.flock`` on its temp file from creation to
  rename, and recovery only touches files whose lock it can take: never the file
  of a live writer, in this process or another one sharing the directory (flock
  locks belong to the open file, so two loggers of one process exclude each
  other too; on NFS, Linux emulates flock with POSIX byte-range locks).

Request logs hold what clients sent: the directory is made owner-only (0700) and
every file is created 0600, whatever the umask (``core.redact.private_dir`` /
``open_private``); a recovered orphan is set to 0600 too. With a ``redaction``
(``core.redact.Redaction``: ``log_drop_features`` / ``log_hash_features``), each
record is redacted on the writer thread before it is framed, so every front end
and both proxies are covered; without one the writer does nothing more.
"""
import fcntl
import logging
import os
import random
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union

from core.config import require_local
from core.redact import FILE_MODE, Redaction, open_private, private_dir
from core.request_log import FILE_PREFIX, FILE_SUFFIX, TMP_SUFFIX, complete_records, tfrecord_frame
from serving import metrics as M

log = logging.getLogger("tfxops.serving")

DRAIN_SECONDS = 0.05     # the writer hands queued records to the OS this often
FSYNC_SECONDS = 1.0      # ... and makes them durable (power loss) this often


class RequestLogger:
    """A bounded queue and a writer thread producing rotated PredictionLog files."""

    def __init__(self, directory: Union[str, Path], sample_rate: float = 1.0,
                 rotate_records: int = 10_000, rotate_seconds: float = 60.0,
                 queue_size: int = 10_000, metrics=None, redaction: Optional[Redaction] = None):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"log_sample_rate must be in [0, 1], got {sample_rate}")
        self.directory = require_local("request_log_dir", directory,
                                       "the request-log writer fsyncs and locks its files")
        self.sample_rate = sample_rate
        self.rotate_records = max(1, int(rotate_records))
        self.rotate_seconds = max(0.01, float(rotate_seconds))
        self.metrics = metrics
        self.redaction = redaction          # features dropped or hashed in each record (None: none)
        self._items: deque = deque()
        self._queue_size = max(1, int(queue_size))
        self._wake = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._seq = 0
        self._token = secrets.token_hex(3)
        self._fd: Optional[int] = None          # the open temp file (flock held)
        self._bytes = 0                           # complete records' bytes in it
        self._tmp_path: Optional[Path] = None
        self._final_path: Optional[Path] = None
        self._records = 0
        self._opened = 0.0
        self.written = 0
        self.dropped = 0
        self.closed_files: List[Path] = []

    # ------------------------------------------------ request side (never blocks)
    def start(self) -> "RequestLogger":
        """Recover the files of killed writers (``recover_orphans``), then write."""
        private_dir(self.directory)
        recover_orphans(self.directory)
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()
        return self

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def submit(self, record: Union[object, Callable[[], object]]) -> bool:
        """Queue a PredictionLog (or a function making one, run on the writer thread)."""
        if len(self._items) >= self._queue_size:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.inc(M.LOG_DROPPED)
            return False
        self._items.append(record)
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, close the open file; idempotent."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    # ------------------------------------------------ writer thread
    def _run(self):
        last_sync = time.monotonic()
        while True:
            stopping = self._stopping
            self._drain()
            if stopping:
                self._drain()
                self._close_file()
                return
            now = time.monotonic()
            if self._fd is not None and now - self._opened >= self.rotate_seconds:
                self._close_file()
            elif self._fd is not None and now - last_sync >= FSYNC_SECONDS:
                self._sync()
                last_sync = now
            self._wake.wait(DRAIN_SECONDS)

    def _drain(self) -> int:
        """Write every queued record; returns how many were written. Records are
        encoded and framed here, then written with one file write per drain (and
        per rotation): the writer thread takes the GIL once per drain, not once
        per record, so it does not keep interrupting the server's loop."""
        items, frames, written = self._items, [], 0
        while items:
            try:
                item = items.popleft()
            except IndexError:
                break
            data = self._encode(item)
            if data is None:
                continue
            frames.append(tfrecord_frame(data))
            if self._records + len(frames) >= self.rotate_records:
                written += self._write_frames(frames)
                frames = []
                self._close_file()
        if frames:
            written += self._write_frames(frames)
        if written and self.metrics is not None:
            self.metrics.inc(M.LOGGED, value=written)
        return written

    def _encode(self, item) -> Optional[bytes]:
        try:
            record = item() if callable(item) else item
            if record is None:
                return None
            data = record if isinstance(record, bytes) else record.SerializeToString()
            return data if self.redaction is None else self.redaction.record(data)
        except Exception:   # noqa: BLE001 - a bad record must not stop the writer
            log.exception("request log: could not encode a record")
            if self.metrics is not None:
                self.metrics.inc(M.LOG_ERRORS)
            return None

    def _write_frames(self, frames: List[bytes]) -> int:
        """Hand ``frames`` to the OS (no user-space buffer: a killed process loses
        none of them). A failed write is cut off the file, so it stays readable."""
        data = b"".join(frames)
        try:
            if self._fd is None:
                self._open_file()
            _write_all(self._fd, data)
        except Exception:   # noqa: BLE001 - a full disk must not stop the server
            log.exception("request log: could not write %d records", len(frames))
            self._cut_torn_write()
            if self.metrics is not None:
                self.metrics.inc(M.LOG_ERRORS, value=len(frames))
            return 0
        self._bytes += len(data)
        self._records += len(frames)
        self.written += len(frames)
        return len(frames)

    def _cut_torn_write(self):
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._bytes)   # O_APPEND: the next write goes there
            except OSError:
                log.exception("request log: could not cut a failed write off %s", self._tmp_path)

    def _sync(self):
        try:
            os.fsync(self._fd)
        except OSError:
            log.exception("request log: could not fsync %s", self._tmp_path)

    def _open_file(self):
        """A new temp file, created and locked (flock) before anything is written.
        A recoverer that takes the lock in between finds it empty and removes it:
        then the next name is taken."""
        while True:
            self._seq += 1
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            # pid + a per-logger token + sequence: two loggers never share a name
            name = f"{FILE_PREFIX}{stamp}-{os.getpid()}-{self._token}-{self._seq:06d}{FILE_SUFFIX}"
            tmp = self.directory / f".{name}{TMP_SUFFIX}"
            fd = open_private(tmp, os.O_WRONLY | os.O_EXCL | os.O_APPEND)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _is_open_as(tmp, fd):
                    break
            except BlockingIOError:
                pass                             # a recoverer has it (and removes it)
            os.close(fd)
        self._fd, self._tmp_path, self._final_path = fd, tmp, self.directory / name
        self._records = self._bytes = 0
        self._opened = time.monotonic()

    def _close_file(self):
        """fsync, rename while still holding the lock (recovery keeps off), close."""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
            os.replace(self._tmp_path, self._final_path)
            self.closed_files.append(self._final_path)
            if self.metrics is not None:
                self.metrics.inc(M.LOG_FILES)
        except Exception:   # noqa: BLE001 - left hidden: the next start recovers it
            log.exception("request log: could not close %s", self._tmp_path)
        finally:
            os.close(self._fd)                   # releases the lock
            self._fd = None
            self._records = 0       # records in the open file


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _is_open_as(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not renamed or removed)."""
    try:
        st, open_st = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (open_st.st_dev, open_st.st_ino)


# ------------------------------------------------------------------ crash recovery
@dataclass
class Recovered:
    """An orphaned temp file, recovered: ``path`` is its final name (``records``
    > 0), or the temp file removed because no record of it was complete."""
    path: Path
    records: int                  # complete records kept
    dropped_bytes: int            # bytes of a torn last record cut off


def recover_orphans(directory: Union[str, Path]) -> List[Recovered]:
    """Recover the hidden temp files of writers that died (``kill -9``, a crash):
    keep every complete record, cut a torn tail, rename to the final name. Files
    whose flock is held (a live writer's, in any process) are left alone, and so
    are files that cannot be recovered (not readable, writable or renamable: an
    error names each). Safe to run from several processes at once; each file is
    recovered by one of them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for tmp in sorted(directory.glob(f".{FILE_PREFIX}*{FILE_SUFFIX}{TMP_SUFFIX}")):
        try:
            found = _recover(tmp)
        except OSError as exc:
            log.error("request log: cannot recover %s (skipped, its records unread): %s. Make "
                      "it a regular file this user can read and write, with the name %s free "
                      "(the next server start or monitor run recovers it), or move it out of %s",
                      tmp, exc, tmp.name[1:-len(TMP_SUFFIX)], directory)
            continue
        if found is not None:
            log.warning("request log: recovered %s from a writer that died: %d records kept, "
                        "%d bytes of a torn record dropped%s", tmp.name, found.records,
                        found.dropped_bytes, "" if found.records else " (file removed)")
            out.append(found)
    return out


def _recover(tmp: Path) -> Optional[Recovered]:
    try:
        fd = os.open(tmp, os.O_RDWR)
    except FileNotFoundError:
        return None                    # closed or recovered meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None                # a live writer's file
        if not _is_open_as(tmp, fd):
            return None                # renamed by its writer or another recoverer
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        records, end = complete_records(data)
        final = tmp.with_name(tmp.name[1:-len(TMP_SUFFIX)])
        if not records:
            os.unlink(tmp)
            return Recovered(tmp, 0, len(data))
        os.ftruncate(fd, end)
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
        os.replace(tmp, final)
        return Recovered(final, records, len(data) - end)
    finally:
        os.close(fd)
