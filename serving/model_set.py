"""The models one ``tfxops serve`` process serves, as TF Serving's ServerCore serves a
``model_config_list``: one ``ModelManager`` per model (its versions, policy, labels),
looked up by name on each request (``by_name``: one dict lookup), and a reload that
replaces the list with TF Serving's semantics: models added load, models removed
unload (after the calls holding them return), a changed policy or labels apply at
once; a model whose base path changed is served from the new one.
"""
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from serving.errors import not_found
from serving.model_config import ServedModel
from serving.models import UNLOAD_WAIT_SECONDS, ModelManager, ModelVersion, VersionStatus, servable_not_found

log = logging.getLogger("tfxops.serving")


@dataclass(frozen=True)
class ModelSetChange:
    """What a reload changed (for the log and the audit trail)."""
    added: Tuple[str, ...] = ()
    removed: Tuple[str, ...] = ()
    changed: Tuple[str, ...] = ()        # same model, another policy, labels or base path

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("added", self.added), ("removed", self.removed), ("changed", self.changed)) if names]
        return "; ".join(parts) or "nothing changed"


class ModelSet:
    """Several models by name; ``make_manager`` builds the manager of a ServedModel."""

    def __init__(self, models: List[ServedModel], make_manager: Callable[[ServedModel], ModelManager]):
        self.make_manager = make_manager
        # replaced whole (never mutated) on reload: a request reads it without a lock
        self.by_name: Dict[str, ModelManager] = {m.name: make_manager(m) for m in models}
        self.served: Dict[str, ServedModel] = {m.name: m for m in models}
        self._reloading = threading.Lock()
        self._started = False

    # ------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load what each model's policy wants (blocking), then watch their directories."""
        for manager in list(self.by_name.values()):
            manager.start()
        self._started = True

    def stop(self, wait_seconds: float = UNLOAD_WAIT_SECONDS) -> None:
        for manager in list(self.by_name.values()):
            manager.stop(wait_seconds)

    # ------------------------------------------------ lookup
    def names(self) -> List[str]:
        return list(self.by_name)

    def manager(self, name: str) -> ModelManager:
        manager = self.by_name.get(name)
        if manager is None:
            raise not_found(f"Could not find any versions of model {name}")
        return manager

    def acquire(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> ModelVersion:
        """The version a request asks for, held until ``release`` (ServingError otherwise)."""
        manager = self.by_name.get(name)
        if manager is None:
            raise servable_not_found(name, version)
        return manager.acquire(name, version, label)

    @staticmethod
    def release(loaded: ModelVersion) -> None:
        loaded.owner.release(loaded)

    def status(self, name: str, version: Optional[int] = None,
               label: Optional[str] = None) -> List[VersionStatus]:
        return self.manager(name).status(name, version, label)

    # ------------------------------------------------ reload
    def reload(self, models: List[ServedModel]) -> ModelSetChange:
        """Serve ``models`` instead (checked by the caller: serving.model_config). New
        models and changed policies load before the list is switched; removed models
        unload in the background (their calls in flight finish first)."""
        with self._reloading:
            old_served, old_managers = self.served, self.by_name
            managers, added, changed, replaced = {}, [], [], []
            for model in models:
                before = old_served.get(model.name)
                if before is not None and before.base_path == model.base_path:
                    managers[model.name] = self._update(old_managers[model.name], before, model, changed)
                    continue
                managers[model.name] = self.make_manager(model)
                if self._started:
                    managers[model.name].start()
                (changed if before is not None else added).append(model.name)
                if before is not None:
                    replaced.append(old_managers[model.name])
            removed = [name for name in old_managers if name not in managers]
            self.by_name, self.served = managers, {m.name: m for m in models}
            for manager in replaced + [old_managers[name] for name in removed]:
                threading.Thread(target=manager.stop, name=f"unload-{manager.name}", daemon=True).start()
        change = ModelSetChange(tuple(added), tuple(removed), tuple(changed))
        if change:
            log.info("model config reloaded: %s; serving %s", change.summary(), ", ".join(self.by_name))
        return change

    def _update(self, manager: ModelManager, before: ServedModel, model: ServedModel,
                changed: List[str]) -> ModelManager:
        """Apply a new policy (loading what it wants now) and then the new labels."""
        if before.policy == model.policy and before.labels == model.labels:
            return manager
        changed.append(model.name)
        if before.policy != model.policy:
            manager.set_policy(model.policy)
            if self._started:
                manager.poll_once()
        manager.set_labels(model.labels)
        return manager
