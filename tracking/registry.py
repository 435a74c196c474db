"""The MLflow model registry beside the push directory: each pushed version is a
model version of the registered model (``mlflow_registered_model``, default
``model_name``) whose source is the version's directory, and the alias
``champion`` follows the version put in front (a push, a promote or rollback, the
monitor's re-push). MLflow numbers model versions itself; the tfxops version is
the tag ``tfxops.version``, by which a version is found again (registered once)."""
import datetime
from typing import Dict, Optional

from core import mlmd, storage
from core.config import Settings
from tracking import store
from tracking.model_facts import ModelFacts, pushed_model_facts
from tracking.run_record import TAG, text

CHAMPION = "champion"
VERSION_TAG = TAG + "version"


def register_pushed_version(settings: Settings, version: int, mlmd_ids: Dict[str, int]) -> None:
    """Register pushed ``version`` (``mlmd_ids``: at least ``pushed_model_id``) and move
    ``champion`` to it. A no-op when the mirror is off; a warning when the store fails."""
    store.mirrored(settings, f"pushed version {version}",
                   lambda client: register(client, settings, version, mlmd_ids, reason=f"pushed version {version}"))


def move_champion(settings: Settings, version: int, reason: str) -> None:
    """Move ``champion`` to ``version`` (registered first if it is not yet), recording
    ``reason`` (e.g. "promoted by tfxops promote", "rollback") on the model version."""
    store.mirrored(settings, f"the champion alias (version {version})",
                   lambda client: _move(client, settings, version, reason))


def register(mlflow_client, settings: Settings, version: int, mlmd_ids: Dict[str, int], reason: str,
             run_id: Optional[str] = None, facts: Optional[ModelFacts] = None) -> str:
    """The MLflow model version of ``version`` (created unless registered before, with
    ``run_id``'s run as its source run), champion moved to it; returns its number."""
    name = store.registered_model_name(settings)
    _ensure_registered_model(mlflow_client, name, str(settings.model_push_dir))
    found = find_version(mlflow_client, name, version)
    if found is None:
        if facts is None and mlmd_ids.get("pushed_model_id") is not None:
            facts = pushed_model_facts(mlmd.open_store(settings), mlmd_ids["pushed_model_id"])
        number = mlflow_client.create_model_version(
            name, source=str(storage.join(settings.model_push_dir, str(version))), run_id=run_id,
            tags=_version_tags(version, mlmd_ids, facts),
            description=f"tfxops version {version} of {settings.model_name}").version
    else:
        number = found.version
    _set_champion(mlflow_client, name, number, version, reason)
    return str(number)


def find_version(mlflow_client, name: str, version: int):
    """The model version registered for tfxops ``version``, or None."""
    found = mlflow_client.search_model_versions(f"name = '{name}' and tags.`{VERSION_TAG}` = '{int(version)}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _move(mlflow_client, settings: Settings, version: int, reason: str) -> str:
    name = store.registered_model_name(settings)
    found = find_version(mlflow_client, name, version)
    if found is None:     # pushed before the mirror was on, or its registration failed then
        pushed = mlmd.pushed_model_for_version(mlmd.open_store(settings), version)
        ids = {"pushed_model_id": pushed.artifact.id} if pushed is not None else {}
        return register(mlflow_client, settings, version, ids, reason)
    _set_champion(mlflow_client, name, found.version, version, reason)
    return str(found.version)


def _ensure_registered_model(mlflow_client, name: str, push_directory: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        mlflow_client.create_registered_model(
            name, tags={TAG + "push_directory": push_directory},
            description="Versions pushed by tfxops; the alias champion names the one in front.")


def _set_champion(mlflow_client, name: str, number, version: int, reason: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(number))
    mlflow_client.set_model_version_tag(name, str(number), TAG + "champion_reason", text(reason))
    mlflow_client.set_model_version_tag(name, str(number), TAG + "champion_since", now)
    mlflow_client.set_registered_model_tag(name, TAG + "champion_version", str(version))
    mlflow_client.set_registered_model_tag(name, TAG + "champion_reason", text(reason))


def _version_tags(version: int, mlmd_ids: Dict[str, int], facts: Optional[ModelFacts]) -> Dict[str, str]:
    tags = {VERSION_TAG: str(int(version))}
    tags.update({f"{TAG}mlmd.{key}": str(value) for key, value in mlmd_ids.items() if value is not None})
    if facts is not None:
        tags.update({TAG + "mlmd.model_id": str(facts.model_id), TAG + "code_fingerprint": facts.code_fingerprint,
                     TAG + "data_fingerprint": facts.data_fingerprint, TAG + "data_span": str(facts.data_span)})
    return {key: value for key, value in tags.items() if value not in ("", "None")}
