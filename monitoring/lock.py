"""One monitor at a time per monitor directory: an exclusive lock on its state.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<monitor_dir>/monitor.lock``:
the kernel releases it when the holding process ends, however it ends (``kill -9``
included), so a lock can never be left stale; it is not inherited by forked
children (the decoding workers), and it works across hosts on NFS (lockd). The
file's content (pid, host, start time, command) only names the holder in the
message another monitor prints; a file that names a process which no longer
holds the lock is stale and is simply taken over (the run says so).

A run holds the lock from before it opens its window until after it commits it,
so the window, its actions and its MLMD records are made by one process only.
``tfxops monitor --watch`` takes it for each run, not for its lifetime.
"""
import dataclasses
import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from core.config import require_local

LOCK_FILE = "monitor.lock"
POLL_SECONDS = 0.2
_held_here = set()             # lock paths held by this process (POSIX locks are per process)
_held_guard = threading.Lock()


class LockError(RuntimeError):
    """The lock cannot be taken on this filesystem (the message says what to do)."""


class LockBusy(LockError):
    """Another monitor holds the lock (the message names it)."""


@dataclasses.dataclass
class Holder:
    pid: int
    host: str
    started: float                     # unix time the lock was taken
    command: str

    @classmethod
    def current(cls) -> "Holder":
        return cls(os.getpid(), socket.gethostname(), time.time(), " ".join(sys.argv)[:200])

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), float(data["started"]), str(data.get("command", "")))
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
        return f"pid {self.pid} on {self.host}, since {when}" + (f" ({self.command})" if self.command else "")


class MonitorLock:
    """``acquire`` / ``release`` of the lock on one monitor directory."""

    def __init__(self, directory):
        self.path = require_local("monitor_dir", directory,
                                  "the monitor's lock is a lock on a local file") / LOCK_FILE
        self._fd: Optional[int] = None
        self.stale: Optional[Holder] = None    # the previous holder, if it ended without releasing

    def acquire(self, wait_seconds: float = 0.0, print_line: Callable[[str], None] = lambda line: None) -> "MonitorLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LockError(f"cannot open the monitor lock {self.path}: {exc.strerror}; monitor_dir "
                            f"must be a writable directory") from None
        deadline, told = time.monotonic() + max(0.0, wait_seconds), False
        while not self._try(fd):
            holder = _read(fd)
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockBusy(_busy_message(self.path, holder, wait_seconds))
            if not told:
                print_line(f"waiting up to {wait_seconds:g} s for the monitor lock {self.path}, held by "
                    f"{holder.describe() if holder else 'another process'}")
                told = True
            time.sleep(POLL_SECONDS)
        previous = _read(fd)
        if previous is not None and previous.pid != os.getpid():
            self.stale = previous
        me = Holder.current()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dataclasses.asdict(me)).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)       # no holder; the file stays (unlinking it would race)
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
            with _held_guard:
                _held_here.discard(str(self.path))

    def _try(self, fd: int) -> bool:
        with _held_guard:
            if str(self.path) in _held_here:      # another thread of this process holds it
                return False
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                return False
            except OSError as exc:                # ENOLCK: a filesystem without locks
                os.close(fd)
                raise LockError(f"cannot lock {self.path}: {exc.strerror}. Put monitor_dir on a "
                               f"filesystem that supports POSIX locks (a local disk, or NFS with lockd)."
                               ) from None
            _held_here.add(str(self.path))
            return True


def _read(fd: int) -> Optional[Holder]:
    """The holder the lock file names, read through the locking descriptor (opening
    the file again and closing it would drop this process's POSIX lock)."""
    try:
        return Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except OSError:
        return None


def _busy_message(path: Path, holder: Optional[Holder], waited: float) -> str:
    who = holder.describe() if holder else "another process (its lock file names none yet)"
    return (f"another monitor is running on {path.parent}: {who} holds {path}. It analyses the "
            f"same requests; this run did nothing" + (f" (waited {waited:g} s)" if waited else "") +
            ". Rerun when it has finished, or set monitor_lock_wait_seconds to wait for it.")


@contextmanager
def hold(directory, wait_seconds: float, print_line: Callable[[str], None]) -> Iterator[MonitorLock]:
    """The lock for the body of one run; says so when it takes over a stale one."""
    lock = MonitorLock(directory).acquire(wait_seconds, print_line)
    if lock.stale is not None:
        print_line(f"the previous monitor ({lock.stale.describe()}) ended without releasing the lock "
            f"(killed?); its window, if it opened one, is resumed")
    try:
        yield lock
    finally:
        lock.release()
