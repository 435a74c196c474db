"""Which process owns something (a pipeline run, a push, a staging directory), and
whether that process is still alive.

An owner is the process id, the host name, the process's start time (clock ticks
since boot, from ``/proc/<pid>/stat``) and the kernel's boot id: a pid reused by
another process after a crash, or after a reboot, does not pass for the owner.
Liveness can only be judged on the owner's own host: elsewhere it is "unknown",
and callers leave the thing alone.

Pipeline runs carry their owner on the MLMD ``pipeline_run`` context
(``RUN_OWNER``), and ``RUN_ENDED`` once the runner has finished with them, so a
reader can tell a run that is still going from one whose process died.
"""
import dataclasses
import json
import os
import socket
from typing import Optional

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"
# Custom properties of the pipeline_run context written by pipeline/runner.py.
RUN_OWNER, RUN_ENDED = "tfxops_owner", "tfxops_ended"
RECOVERED = "tfxops_recovered"   # on what pipeline.recovery recorded for a killed push


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _stat(pid: int) -> Optional[list]:
    """Fields 3.. of /proc/<pid>/stat (after the command name); None if no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


@dataclasses.dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: Optional[int] = None      # ticks since boot; None where /proc is missing
    boot_id: Optional[str] = None

    @classmethod
    def current(cls) -> "Owner":
        pid = os.getpid()
        fields = _stat(pid)
        return cls(pid, socket.gethostname(), int(fields[19]) if fields else None, _boot_id())

    @classmethod
    def from_dict(cls, data) -> Optional["Owner"]:
        """An owner from ``as_dict`` output (or its JSON); None if it is not one."""
        try:
            data = json.loads(data) if isinstance(data, str) else data
            return cls(int(data["pid"]), str(data["host"]), data.get("started"), data.get("boot_id"))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def state(self) -> str:
        """ALIVE, DEAD, or UNKNOWN (another host: cannot be checked from here)."""
        if self.host != socket.gethostname():
            return UNKNOWN
        if self.boot_id and _boot_id() and self.boot_id != _boot_id():
            return DEAD                    # rebooted since
        if not os.path.isdir("/proc/self"):
            return _signal_check(self.pid)
        fields = _stat(self.pid)
        if fields is None or fields[0] in ("Z", "X"):   # gone, or a zombie not yet reaped
            return DEAD
        if self.started is not None and int(fields[19]) != int(self.started):
            return DEAD                    # the pid now belongs to another process
        return ALIVE

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _signal_check(pid: int) -> str:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return DEAD
    except PermissionError:
        return ALIVE
    return ALIVE
