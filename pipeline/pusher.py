"""AtomicPusher: TFX's Pusher, but a model server never sees a half-written version.

TFX's filesystem Pusher copies the SavedModel straight into
``<base>/<unix seconds>``; a server polling ``<base>`` (TF Serving or ours) can
find the numeric directory while files are still arriving. This executor copies
into a hidden, non-numeric sibling (``.incoming-<version>-<pid>``), then renames it
to ``<version>`` in one ``os.rename`` on the same filesystem. On any error the
partial copy is removed and nothing appears under ``<base>``.

Versions are unix seconds as in TFX, bumped past the newest existing version so
two pushes in one second, or a clock step back, never collide.

The PushedModel artifact gets TFX's custom properties (``pushed``,
``pushed_destination``, ``pushed_version``), so TFX's resolvers and our lineage
read it like any Pusher output.
"""
import os
import shutil
import time
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

INCOMING_PREFIX = ".incoming-"


def existing_versions(base_directory: str) -> List[int]:
    """Numeric version directories under ``base_directory`` (what servers load)."""
    if not os.path.isdir(base_directory):
        return []
    return sorted(int(name) for name in os.listdir(base_directory) if name.isdigit())


def next_version(base_directory: str, now: float = None) -> int:
    newest = max(existing_versions(base_directory), default=0)
    return max(int(now if now is not None else time.time()), newest + 1)


def publish_atomically(model_path: str, base_directory: str) -> str:
    """Copy ``model_path`` to ``base_directory/<version>`` atomically; returns the version."""
    os.makedirs(base_directory, exist_ok=True)
    version = next_version(base_directory)
    staging = os.path.join(base_directory, f"{INCOMING_PREFIX}{version}-{os.getpid()}")
    try:
        shutil.copytree(model_path, staging)
        # A concurrent pusher may have taken the number meanwhile: rename fails on a
        # non-empty target, so move on to the next free version.
        while True:
            target = os.path.join(base_directory, str(version))
            try:
                os.rename(staging, target)
                break
            except OSError:
                if not os.path.exists(target):
                    raise
                version += 1
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return str(version)


class AtomicPusherExecutor(pusher_executor.Executor):
    """Pusher executor with an atomic, collision-free filesystem push."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("AtomicPusher pushes to a filesystem destination only")
        base = destination.filesystem.base_directory
        version = publish_atomically(model_path, base)
        serving_path = os.path.join(base, version)
        logging.info("Model published atomically to %s.", serving_path)
        # The archive copy inside the pipeline root, as TFX's Pusher keeps it.
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)


class AtomicPusher(pusher_component.Pusher):
    """``tfx.components.Pusher`` with ``AtomicPusherExecutor``."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)
