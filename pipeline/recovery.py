"""Recovering what a `kill -9` left in the push directory (see pipeline/pusher.py).

``recover(settings)`` runs at the start of every ``tfxops run``; a server, the
monitor or an operator may call it too. Under an exclusive lock (flock) on a
local push directory, so two callers never judge the same version at once (an
object store has no lock: one pipeline per push directory there), it:

* removes ``.incoming-*`` staging directories whose process is gone (and, on an
  object store, the unfinished version each was copying to);
* for each version directory with no PushedModel in MLMD:
  - its pusher still alive (or on another host): left alone, its record may be
    on its way;
  - no push marker, or a marker written for another directory (a copy): left in
    place and reported (tfxops did not push it here);
  - the marker names a Pusher execution still RUNNING in MLMD: recorded as that
    execution's PushedModel with TFX's own publisher (execution COMPLETE,
    ``tfxops_recovered`` on both), and its run marked as ended;
  - otherwise: moved aside to ``<base>/.orphaned-<version>``.

Executions of other killed nodes are left RUNNING, as TFX leaves them;
``tfxops lineage runs`` shows their run as "abandoned" (core/owner.py).
"""
import contextlib
import dataclasses
import datetime
import fcntl
import os
from typing import Dict, List, Optional, Set

from core import mlmd, pushdir, storage
from core.config import Settings
from core.owner import ALIVE, DEAD, RECOVERED, RUN_ENDED, UNKNOWN, Owner


@dataclasses.dataclass
class Recovery:
    recorded: List[str] = dataclasses.field(default_factory=list)        # versions
    moved_aside: List[str] = dataclasses.field(default_factory=list)     # new paths
    removed_staging: List[str] = dataclasses.field(default_factory=list)
    left: List[str] = dataclasses.field(default_factory=list)            # why, one line each

    def lines(self) -> List[str]:
        out = [f"recorded version {v} in ML Metadata (its push had no record: the Pusher's process died)"
               for v in self.recorded]
        out += [f"moved aside {path} (pushed by a process that died before recording it; no "
                f"matching execution in ML Metadata)" for path in self.moved_aside]
        out += [f"removed {path} (a copy cut short: its process is gone)" for path in self.removed_staging]
        return out + self.left

    def as_dict(self) -> Dict:
        return dataclasses.asdict(self)


def recover(settings: Settings) -> Recovery:
    base = str(settings.model_push_dir)
    report = Recovery()
    if not storage.isdir(base):
        return report
    with _locked(base):
        report.removed_staging, kept = pushdir.remove_stale_staging(base)
        report.left += [f"kept {path}: {_whose(pushdir.owner_of(path))}" for path in kept]
        store = _open_store(settings)
        recorded = _recorded_versions(store, base)
        for version in pushdir.existing_versions(base):
            if str(version) not in recorded:
                _recover_version(settings, store, base, str(version), report)
    return report


@contextlib.contextmanager
def _locked(base: str):
    """An exclusive flock on a local push directory itself (no lock file beside the
    versions); nothing on a URI (object stores have no locks)."""
    if storage.is_uri(base):
        yield
        return
    descriptor = os.open(base, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)            # releases the lock


def _whose(owner: Optional[Owner]) -> str:
    if owner is None:
        return "its writer is unknown"
    state = owner.state()
    if state == ALIVE:
        return f"its writer ({owner.describe()}) is still running"
    if state == UNKNOWN:
        return f"written from {owner.host}, which cannot be checked from here"
    return f"its writer ({owner.describe()}) is gone"


def _open_store(settings: Settings):
    try:
        return mlmd.open_store(settings, readonly=True)
    except mlmd.MetadataError:       # no store yet: nothing is recorded
        return None


def _recorded_versions(store, base: str) -> Set[str]:
    """Versions under ``base`` that a PushedModel in MLMD says were pushed there."""
    if store is None:
        return set()
    return {os.path.basename(pushed.destination)
            for pushed in mlmd.with_retry(lambda: mlmd.pushed_models(store)) if pushed.is_in(base)}


def _recover_version(settings: Settings, store, base: str, version: str, report: Recovery) -> None:
    path = str(storage.join(base, version))
    marker = pushdir.read_marker(path)
    if marker is None:
        report.left.append(f"version {version}: no record in ML Metadata and no push marker (not pushed "
                           f"by tfxops): left in place; lineage cannot trace it")
        return
    if storage.canonical(str(marker.get("base_directory"))) != storage.canonical(base):
        report.left.append(f"version {version}: a copy of a version pushed to {marker.get('base_directory')} "
                           f"(its push marker says so), not recorded here: left in place")
        return
    owner = Owner.from_dict(marker.get("owner"))
    if owner is not None and owner.state() != DEAD:
        report.left.append(f"version {version}: not recorded yet, {_whose(owner)}: left alone")
        return
    execution = _killed_pusher(store, marker)
    if execution is None:
        report.moved_aside.append(pushdir.move_aside(base, version))
        return
    _record(settings, path, version, marker, execution)
    report.recorded.append(version)


def _killed_pusher(store, marker: Dict):
    """The RUNNING execution of the marker's run and node, if MLMD has it."""
    execution_id = marker.get("execution_id")
    if store is None or not marker.get("pipeline_run_id") or not str(execution_id or "").isdigit():
        return None
    execution = mlmd.execution(store, int(execution_id))
    if execution is None or execution.last_known_state not in (mlmd.STATE.RUNNING, mlmd.STATE.NEW):
        return None
    node_id, run_id = mlmd.node_and_run(store, execution.id, marker.get("pipeline_name"))
    if run_id == marker["pipeline_run_id"] and node_id == marker.get("node_id"):
        return execution
    return None


def _record(settings: Settings, path: str, version: str, marker: Dict, execution) -> None:
    """Publish the version as the killed execution's PushedModel, as the launcher
    would have (TFX's publisher: artifact LIVE, OUTPUT event, execution COMPLETE),
    and mark the execution and its run as recovered."""
    from tfx.orchestration import metadata
    from tfx.orchestration.portable import execution_publish_utils
    from tfx.types import standard_component_specs

    note = (f"recorded by pipeline.recovery (pid {os.getpid()}) at "
            f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}: the Pusher's "
            f"process died after publishing version {version}, before its record")
    pushed = _pushed_model(path, version, marker, note)
    with metadata.Metadata(mlmd.connection_config(settings)) as handle:
        store = handle.store
        execution_publish_utils.publish_succeeded_execution(
            handle, execution.id, store.get_contexts_by_execution(execution.id),
            {standard_component_specs.PUSHED_MODEL_KEY: [pushed]})
        [done] = store.get_executions_by_id([execution.id])
        done.custom_properties[RECOVERED].string_value = note
        store.put_executions([done])
        for run in store.get_contexts_by_execution(execution.id):
            if run.type == mlmd.RUN_CONTEXT and RUN_ENDED not in run.custom_properties:
                run.custom_properties[RUN_ENDED].string_value = f"recovered: {note}"
                store.put_contexts([run])


def _pushed_model(path: str, version: str, marker: Dict, note: str):
    """The PushedModel the Pusher would have output, with its archive copy (the
    copy TFX's Pusher keeps in the artifact's uri) made again, whole."""
    from tfx.types import standard_artifacts
    from tfx.utils import io_utils

    pushed = standard_artifacts.PushedModel()
    pushed.uri = marker.get("pushed_model_uri") or path
    if pushed.uri != path:
        io_utils.delete_dir(pushed.uri)
        io_utils.copy_dir(path, pushed.uri)
    pushed.set_int_custom_property("pushed", 1)
    pushed.set_string_custom_property("pushed_destination", path)
    pushed.set_string_custom_property("pushed_version", version)
    pushed.set_string_custom_property(RECOVERED, note)
    return pushed
